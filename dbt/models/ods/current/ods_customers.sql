with

customers as (

    select * from {{ ref('stg_customers') }}

),

final as (

    -- Every stg_ column but the CDC version: current state, not its bookkeeping.
    select
        customer_id,
        customer_name_hash,
        email_hash,
        phone_hash,
        address_hash,
        birth_year,
        city,
        country,
        home_lat,
        home_lon,
        segment,
        status,
        is_closed,
        created_at,
        updated_at,
        closed_at,
        status_changed_at

    from customers

)

select * from final
