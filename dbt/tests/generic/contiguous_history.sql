{#- SCD2 invariant: per key, each state ends exactly when the next one starts, and only the last
    state is open (valid_to null). Fails on every state breaking that. -#}
{% test contiguous_history(model, key) %}

with

ordered as (

    select
        {{ key }},
        valid_from,
        valid_to,
        leadInFrame(toNullable(valid_from)) over (
            partition by {{ key }} order by valid_from
            rows between current row and 1 following
        ) as next_valid_from

    from {{ model }}

)

select *
from ordered
where not (
    (next_valid_from is null and valid_to is null)
    or (next_valid_from is not null and valid_to = next_valid_from)
)

{% endtest %}
