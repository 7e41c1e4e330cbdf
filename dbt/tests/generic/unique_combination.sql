{#- Fails on every combination of `columns` that appears more than once (composite keys). -#}
{% test unique_combination(model, columns) %}

select {{ columns | join(', ') }}, count() as occurrences
from {{ model }}
group by {{ columns | join(', ') }}
having occurrences > 1

{% endtest %}
