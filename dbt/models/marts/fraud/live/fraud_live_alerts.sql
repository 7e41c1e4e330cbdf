{#- Parameterised view (low, high): every alert of every rule on the cards and days the CDC
    versions in (low, high] touch (fraud_live_scope), from the landing tables through the stg_
    views, so it needs no dbt build to see a change. The rules are the batch marts' macros
    (macros/fraud_rules.sql) over the same transaction facts (macros/transaction_facts.sql);
    only their inputs are scoped: a card's transactions two days either side of its changed days
    (windows are < 1 day), alerts one day either side. -#}
with

scope as (

    {{ live_scope() }}

),

scoped_transactions as (

    -- Every version of the scoped cards' transactions names the keys; FINAL then reads their
    -- current state by primary key.
    select * from {{ ref('stg_transactions') }}
    where txn_id in (
        select changes.txn_id
        from {{ ref('stg_transaction_changes') }} as changes
        inner join scope on changes.card_id = scope.card_id
        where
            toDate(changes.occurred_at) >= addDays(scope.first_day, -2)
            and toDate(changes.occurred_at) <= addDays(scope.last_day, 2)
    )

),

live_facts as (

    {{ transaction_facts(
        'scoped_transactions', ref('stg_accounts'), ref('stg_cards'), ref('stg_terminals')
    ) }}

),

live_cards as (

    select * from {{ ref('stg_cards') }}
    where card_id in (select scope.card_id from scope)

),

live_customers as (

    select * from {{ ref('stg_customers') }}
    where customer_id in (select live_facts.customer_id from live_facts)

),

alerts as (

        select * from (
            {{ fraud_rapid_withdrawals_alerts('live_facts', '1', '1') }}
        )

        union all

        select * from (
            {{ fraud_after_card_closed_alerts('live_facts', 'live_cards', '1', '1') }}
        )

        union all

        select * from (
            {{ fraud_amount_probing_alerts('live_facts', '1', '1') }}
        )

        union all

        select * from (
            {{ fraud_card_testing_alerts('live_facts', '1', '1') }}
        )

        union all

        select * from (
            {{ fraud_account_takeover_alerts('live_facts', 'live_customers', '1', '1') }}
        )

),

final as (

    select
        alerts.rule,
        alerts.txn_id,
        alerts.card_id,
        alerts.customer_id,
        alerts.occurred_at,
        alerts.score,
        alerts.evidence,
        scope.triggered_at

    from alerts
    inner join scope on alerts.card_id = scope.card_id
    where
        toDate(alerts.occurred_at) >= addDays(scope.first_day, -1)
        and toDate(alerts.occurred_at) <= addDays(scope.last_day, 1)

)

select * from final
