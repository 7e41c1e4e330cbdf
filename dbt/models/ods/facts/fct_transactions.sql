-- depends_on: {{ ref('stg_transaction_changes') }}
{#- Sorted by txn_id, the order rows arrive in (ids grow with time), so a full build inserts
    without re-sorting; the minmax index on occurred_on lets the marts' day filters skip the
    granules of other days. -#}
{{
    config(
        engine='MergeTree()',
        order_by='txn_id',
        indexes=[{'name': 'occurred_on_minmax', 'definition': 'occurred_on TYPE minmax GRANULARITY 1'}],
        pre_hook="{{ delete_changed_keys('stg_transaction_changes', 'txn_id') }}",
        post_hook="{{ record_cdc_watermark() }}",
    )
}}

with

transactions as (

    select * from {{ ref('stg_transactions') }}
    {% if is_incremental() %}
    where txn_id in ({{ changed_keys('stg_transaction_changes', 'txn_id') }})
    {% endif %}

),

accounts as (

    select
        account_id,
        customer_id

    from {{ ref('stg_accounts') }}

),

cards as (

    select
        card_id,
        network

    from {{ ref('stg_cards') }}

),

terminals as (

    select
        terminal_id,
        terminal_kind,
        mcc,
        country,
        lat,
        lon

    from {{ ref('stg_terminals') }}

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
