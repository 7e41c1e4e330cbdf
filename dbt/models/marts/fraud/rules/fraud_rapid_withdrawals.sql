{%- set min_count = var('rapid_withdrawals_min_count') -%}
{%- set window_minutes = var('rapid_withdrawals_window_minutes') -%}

with

withdrawals as (

    -- Any status: a cash-out burst is suspicious even when the account runs dry mid-way.
    select
        txn_id,
        card_id,
        customer_id,
        occurred_at,
        amount,
        toUnixTimestamp64Milli(occurred_at) as occurred_ms

    from {{ ref('fct_transactions') }}
    -- Context: the changed days and the day either side of them (windows are < 1 day).
    where
        {{ in_changed_days('occurred_on', 2) }}
        and txn_type = 'withdrawal' and card_id is not null

),

bursts as (

    {{ with_burst_size('withdrawals', 'card_id', window_minutes) }}

),

final as (

    select
        {{ alert_columns('fraud_rapid_withdrawals') }},
        least(1.0, burst_size / {{ 2 * min_count }}) as score,
        toJSONString(map(
            'withdrawals_in_window', toString(burst_size),
            'window_minutes', '{{ window_minutes }}',
            'amount', toString(amount)
        )) as evidence

    from bursts
    where
        {{ in_changed_days('toDate(occurred_at)', 1) }}
        and burst_size >= {{ min_count }}

)

select * from final
