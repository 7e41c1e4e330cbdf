{#- Lifecycle invariant: no transaction of `model` is approved after the close of the entity its
    `column_name` points to (`to`, keyed by `field`, with `closed_at`). -#}
{% test no_approved_after_close(model, column_name, to, field) %}

with

approved as (

    select txn_id, {{ column_name }} as entity_id, occurred_at
    from {{ model }}
    where is_approved and {{ column_name }} is not null

),

closed as (

    select {{ field }} as entity_id, closed_at
    from {{ to }}
    where closed_at is not null

)

select approved.txn_id, approved.entity_id, approved.occurred_at, closed.closed_at
from approved
inner join closed on approved.entity_id = closed.entity_id
where approved.occurred_at > closed.closed_at

{% endtest %}
