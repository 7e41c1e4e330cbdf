{#- One row per (rule, transaction) alert. Every rule model has the same columns; adding a rule
    means adding its model to this list. -#}
{%- set rules = [
    'fraud_rapid_withdrawals',
    'fraud_after_card_closed',
    'fraud_amount_probing',
    'fraud_card_testing',
    'fraud_account_takeover',
] -%}

with

{% for rule in rules %}
    {{ rule }} as (

        select
            rule,
            txn_id,
            card_id,
            customer_id,
            occurred_at,
            score,
            evidence

        from {{ ref(rule) }}

    ),

{% endfor %}
unioned as (

    {% for rule in rules %}
        select * from {{ rule }}
        {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

dated as (

    select
        *,
        toDate(occurred_at) as alerted_on

    from unioned

),

final as (

    select
        rule,
        txn_id,
        card_id,
        customer_id,
        occurred_at,
        alerted_on,
        score,
        evidence

    from dated

)

select * from final
