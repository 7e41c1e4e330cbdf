{%- set min_declines = var('amount_probing_min_declines') -%}
{%- set window_minutes = var('amount_probing_window_minutes') -%}
{%- set window_ms = window_minutes * 60 * 1000 -%}

with

purchases as (

    select
        txn_id,
        card_id,
        customer_id,
        terminal_id,
        occurred_at,
        amount,
        status,
        decline_reason,
        decline_reason in ('limit_exceeded', 'insufficient_funds') as is_probe_decline

    from {{ ref('fct_transactions') }}
    -- Context: the changed days and the day either side of them (windows are < 1 day).
    where
        {{ in_changed_days('occurred_on', 2) }}
        and card_id is not null and terminal_id is not null and txn_type = 'purchase'

),

probed_pairs as (

    -- Only a card that was declined at one merchant often enough can be probing there; this
    -- keeps the windows below to a handful of rows.
    select
        card_id,
        terminal_id

    from purchases
    where is_probe_decline
    group by card_id, terminal_id
    having count() >= {{ min_declines }}

),

attempts as (

    -- Everything those cards tried at those merchants: the probes and what follows them.
    select
        *,
        toUnixTimestamp64Milli(occurred_at) as occurred_ms

    from purchases
    where (card_id, terminal_id) in (
        select
            probed_pairs.card_id,
            probed_pairs.terminal_id
        from probed_pairs
    )

),

windowed as (

    select
        *,
        countIf(is_probe_decline) over probe_window as declines_around,
        maxIf(amount, is_probe_decline) over probe_window as top_declined_amount,
        minIf(amount, is_probe_decline) over probe_window as bottom_declined_amount

    from attempts
    window probe_window as (
        partition by card_id, terminal_id order by occurred_ms
        range between {{ window_ms }} preceding and {{ window_ms }} following
    )

),

final as (

    -- Legitimate customers retry a declined purchase at most once; a prober walks the amount
    -- down, so every attempt around the declines is at or below the first declined amount.
    select
        {{ alert_columns('fraud_amount_probing') }},
        least(1.0, declines_around / {{ 2 * min_declines }}) as score,
        toJSONString(map(
            'declines_at_merchant', toString(declines_around),
            'terminal_id', toString(terminal_id),
            'first_declined_amount', toString(top_declined_amount),
            'lowest_declined_amount', toString(bottom_declined_amount),
            'amount', toString(amount),
            'status', status
        )) as evidence

    from windowed
    where
        {{ in_changed_days('toDate(occurred_at)', 1) }}
        and declines_around >= {{ min_declines }}
        and amount <= top_declined_amount
        and top_declined_amount > bottom_declined_amount

)

select * from final
