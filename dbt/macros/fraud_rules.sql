{#- The fraud rules, one definition each: the batch models (models/marts/fraud/rules/) and the
    live alerts (models/marts/fraud/live/) call the same macro with different inputs.
    `facts` is a relation with fct_transactions' columns; `context` a predicate on
    `occurred_on` choosing the rows a window may see; `output` a predicate on
    `toDate(occurred_at)` choosing the rows that may be alerted (windows are < 1 day, so output
    days ± 1 of context suffice). `cards` / `customers` have ods_cards' / ods_customers'
    columns. -#}

{% macro fraud_account_takeover_alerts(facts, customers, context, output) -%}
{%- set window_ms = var('account_takeover_window_minutes') * 60 * 1000 -%}

with

card_present as (

    select
        txn_id,
        card_id,
        customer_id,
        occurred_at,
        terminal_lat,
        terminal_lon,
        toUnixTimestamp64Milli(occurred_at) as occurred_ms

    from {{ facts }}
    where
        {{ context }}
        and channel in ('atm', 'pos') and card_id is not null

),

customers as (

    select
        customer_id,
        home_lat,
        home_lon

    from {{ customers }}

),

located as (

    select
        card_present.*,
        geoDistance(
            toFloat64(customers.home_lon), toFloat64(customers.home_lat),
            toFloat64(card_present.terminal_lon), toFloat64(card_present.terminal_lat)
        ) / 1000 as km_from_home

    from card_present
    inner join customers on card_present.customer_id = customers.customer_id

),

far_cards as (

    -- Only cards used far from home somewhere need the time windows below.
    select distinct card_id from located
    where km_from_home > {{ var('account_takeover_far_km') }}

),

travel as (

    -- Closest-to-home card-present use of the same card within the window around this one.
    select
        *,
        min(km_from_home) over (
            partition by card_id order by occurred_ms
            range between {{ window_ms }} preceding and {{ window_ms }} following
        ) as nearest_home_km_around

    from located
    where card_id in (select far_cards.card_id from far_cards)

),

final as (

    -- Impossible travel: the card is used far away and at home within a few hours.
    select
        {{ alert_columns('fraud_account_takeover') }},
        least(1.0, km_from_home / {{ 2 * var('account_takeover_far_km') }}) as score,
        toJSONString(map(
            'km_from_home', toString(round(km_from_home)),
            'km_from_home_nearby_use', toString(round(nearest_home_km_around)),
            'window_minutes', '{{ var("account_takeover_window_minutes") }}'
        )) as evidence

    from travel
    where
        {{ output }}
        and km_from_home > {{ var('account_takeover_far_km') }}
        and nearest_home_km_around < {{ var('account_takeover_home_km') }}

)

select * from final
{%- endmacro %}

{% macro fraud_after_card_closed_alerts(facts, cards, context, output) -%}
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

    from {{ facts }}
    where
        {{ context }}
        and card_id is not null

),

closed_cards as (

    select
        card_id,
        closed_at

    from {{ cards }}
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
        {{ output }}
        and burst_size >= {{ min_attempts }}

)

select * from final
{%- endmacro %}

{% macro fraud_amount_probing_alerts(facts, context, output) -%}
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

    from {{ facts }}
    where
        {{ context }}
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
        {{ output }}
        and declines_around >= {{ min_declines }}
        and amount <= top_declined_amount
        and top_declined_amount > bottom_declined_amount

)

select * from final
{%- endmacro %}

{% macro fraud_card_testing_alerts(facts, context, output) -%}
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

    from {{ facts }}
    where
        {{ context }}
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
        {{ output }}
        and burst_size >= {{ min_count }}

)

select * from final
{%- endmacro %}

{% macro fraud_rapid_withdrawals_alerts(facts, context, output) -%}
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

    from {{ facts }}
    where
        {{ context }}
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
        {{ output }}
        and burst_size >= {{ min_count }}

)

select * from final
{%- endmacro %}
