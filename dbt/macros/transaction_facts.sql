{#- Transactions with the immutable attributes of their account, card and terminal: the shape
    of fct_transactions, which the fraud rules read. `transactions` has stg_transactions'
    columns; the dimensions are the stg_ models. The live alerts
    (models/marts/fraud/live/) build the same shape from the landing tables between builds. -#}
{% macro transaction_facts(transactions, accounts, cards, terminals) -%}

with

transactions as (

    select * from {{ transactions }}

),

accounts as (

    select
        account_id,
        customer_id

    from {{ accounts }}

),

cards as (

    select
        card_id,
        network

    from {{ cards }}

),

terminals as (

    select
        terminal_id,
        terminal_kind,
        mcc,
        country,
        lat,
        lon

    from {{ terminals }}

),

joined as (

    -- Only attributes that never change after creation are copied from the dimensions, so a
    -- row written by an earlier incremental run never goes stale.
    -- In a join of more than two tables ClickHouse names a column another table also has by its
    -- qualified name (`transactions.card_id`): those aliases are needed (noqa: AL09).
    select
        transactions.txn_id,
        transactions.txn_ref,
        transactions.account_id as account_id,  -- noqa: AL09
        transactions.card_id as card_id,  -- noqa: AL09
        transactions.terminal_id as terminal_id,  -- noqa: AL09
        transactions.txn_type,
        transactions.status,
        transactions.decline_reason,
        transactions.amount,
        transactions.currency,
        transactions.balance_after,
        transactions.occurred_at,
        transactions.is_approved,
        transactions.is_declined,
        transactions.is_debit,
        transactions.cdc_version,
        accounts.customer_id,
        cards.network as card_network,
        terminals.mcc,
        terminals.country as terminal_country,
        terminals.lat as terminal_lat,
        terminals.lon as terminal_lon,
        if(transactions.is_debit, -transactions.amount, transactions.amount) as signed_amount,
        toDate(transactions.occurred_at) as occurred_on,
        -- After the join: a transaction without a terminal gets 'none', not NULL.
        coalesce(terminals.terminal_kind, 'none') as channel

    from transactions
    left join accounts on transactions.account_id = accounts.account_id
    left join cards on transactions.card_id = cards.card_id
    left join terminals on transactions.terminal_id = terminals.terminal_id

),

final as (

    select
        txn_id,
        txn_ref,
        account_id,
        customer_id,
        card_id,
        terminal_id,
        txn_type,
        status,
        decline_reason,
        amount,
        signed_amount,
        currency,
        balance_after,
        occurred_at,
        occurred_on,
        is_approved,
        is_declined,
        is_debit,
        card_network,
        channel,
        mcc,
        terminal_country,
        terminal_lat,
        terminal_lon,
        cdc_version

    from joined

)

select * from final
{%- endmacro %}
