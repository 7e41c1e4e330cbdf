{#- Every alert of every fraud rule on the cards and days one live evaluation re-decides
    (bankde.transform.live, step 3 of 3): the batch marts' macros (macros/fraud_rules.sql) over
    the scoped facts step 2 wrote to fraud_live_facts_scratch, alerts one day either side of the
    scope's changed days (fraud_live_scope_scratch, step 1). The steps go through tables because
    ClickHouse plans one query of scope, facts and rules together in seconds whatever the scope's
    size; each step alone plans in milliseconds (docs/freshness.md). -#}
with

scope as (

    select * from {{ ref('fraud_live_scope_scratch') }}

),

live_facts as (

    select * from {{ ref('fraud_live_facts_scratch') }}

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
