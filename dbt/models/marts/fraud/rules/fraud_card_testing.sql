{%- set min_count = var('card_testing_min_count') -%}
{%- set window_minutes = var('card_testing_window_minutes') -%}

with

small_online as (

    select
        txn_id,
        card_id,
        customer_id,
        terminal_id,
        occurred_at,
        amount,
        toUnixTimestamp64Milli(occurred_at) as occurred_ms

    from {{ ref('fct_transactions') }}
    -- Context: the changed days and the day either side of them (windows are < 1 day).
    where
        {{ in_changed_days('occurred_on', 2) }}
        and channel = 'online'
        and txn_type = 'purchase'
        and card_id is not null
        and amount <= {{ var('card_testing_max_amount') }}

),

bursts as (

    {{ with_burst_size('small_online', 'card_id', window_minutes) }}

),

final as (

    select
        {{ alert_columns('fraud_card_testing') }},
        least(1.0, burst_size / {{ 2 * min_count }}) as score,
        toJSONString(map(
            'small_online_purchases_in_window', toString(burst_size),
            'window_minutes', '{{ window_minutes }}',
            'amount', toString(amount),
            'terminal_id', toString(terminal_id)
        )) as evidence

    from bursts
    where
        {{ in_changed_days('toDate(occurred_at)', 1) }}
        and burst_size >= {{ min_count }}

)

select * from final
