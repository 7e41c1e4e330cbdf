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

    from {{ ref('fct_transactions') }}
    -- Context: the changed days and the day either side of them (windows are < 1 day).
    where
        {{ in_changed_days('occurred_on', 2) }}
        and channel in ('atm', 'pos') and card_id is not null

),

customers as (

    select
        customer_id,
        home_lat,
        home_lon

    from {{ ref('ods_customers') }}

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
        {{ in_changed_days('toDate(occurred_at)', 1) }}
        and km_from_home > {{ var('account_takeover_far_km') }}
        and nearest_home_km_around < {{ var('account_takeover_home_km') }}

)

select * from final
