{#- The transaction facts one live evaluation reads (bankde.transform.live, step 2 of 3): the
    shape of fct_transactions (macros/transaction_facts.sql) for the cards and days in
    fraud_live_scope_scratch, which step 1 filled from fraud_live_scope(low, high). Read from the
    landing tables through the stg_ views, so it needs no dbt build to see a change: a scoped
    card's transactions two days either side of its changed days (rule windows are < 1 day). -#}
with

scope as (

    select * from {{ ref('fraud_live_scope_scratch') }}

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

final as (

    {{ transaction_facts(
        'scoped_transactions', ref('stg_accounts'), ref('stg_cards'), ref('stg_terminals')
    ) }}

)

select * from final
