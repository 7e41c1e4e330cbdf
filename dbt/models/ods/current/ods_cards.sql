with

cards as (

    select * from {{ ref('stg_cards') }}

),

final as (

    -- Every stg_ column but the CDC version: current state, not its bookkeeping.
    select
        card_id,
        account_id,
        customer_id,
        pan_hash,
        pan_last4,
        network,
        expires_on,
        daily_limit,
        status,
        is_closed,
        created_at,
        updated_at,
        closed_at,
        status_changed_at

    from cards

)

select * from final
