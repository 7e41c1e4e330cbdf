{#- Fails on every row where the expression is false (optionally only rows matching `where`). -#}
{% test expression_is_true(model, expression, column_name=none, condition=none) %}

select *
from {{ model }}
where not ({{ expression }})
{% if condition %}
    and ({{ condition }})
{% endif %}

{% endtest %}
