{%- set min_attempts = var('after_card_closed_min_attempts') -%}
{%- set window_minutes = var('after_card_closed_window_minutes') -%}

with

transactions as (

    select
        txn_id,
        card_id,
        customer_id,
        occurred_at,
        status,
        decline_reason

    from {{ ref('fct_transactions') }}
    -- Context: the changed days and the day either side of them (windows are < 1 day).
    where
        {{ in_changed_days('occurred_on', 2) }}
        and card_id is not null

),

closed_cards as (

    select
        card_id,
        closed_at

    from {{ ref('ods_cards') }}
    where closed_at is not null

),

after_close as (

    select
        transactions.*,
        closed_cards.closed_at as card_closed_at,
        toUnixTimestamp64Milli(transactions.occurred_at) as occurred_ms

    from transactions
    inner join closed_cards on transactions.card_id = closed_cards.card_id
    where transactions.occurred_at > closed_cards.closed_at

),

-- A holder who forgot the card was closed tries once or twice; a thief keeps going.
bursts as (

    {{ with_burst_size('after_close', 'card_id', window_minutes) }}

),

final as (

    select
        {{ alert_columns('fraud_after_card_closed') }},
        least(1.0, burst_size / {{ 2 * min_attempts }}) as score,
        toJSONString(map(
            'card_closed_at', toString(card_closed_at),
            'minutes_after_close',
            toString(intDiv(dateDiff('second', card_closed_at, occurred_at), 60)),
            'attempts_in_window', toString(burst_size),
            'decline_reason', coalesce(decline_reason, '')
        )) as evidence

    from bursts
    where
        {{ in_changed_days('toDate(occurred_at)', 1) }}
        and burst_size >= {{ min_attempts }}

)

select * from final
