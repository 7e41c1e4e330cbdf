with

terminals as (

    select * from {{ ref('stg_terminals') }}

),

final as (

    -- Every stg_ column but the CDC version: current state, not its bookkeeping.
    select
        terminal_id,
        terminal_kind,
        merchant_name,
        mcc,
        city,
        country,
        lat,
        lon,
        status,
        is_closed,
        created_at,
        updated_at,
        closed_at,
        status_changed_at

    from terminals

)

select * from final
