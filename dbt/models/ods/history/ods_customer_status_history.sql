with

snapshot as (

    select * from {{ ref('snap_customer_status') }}

),

final as (

    select
        customer_id,
        status,
        is_closed,
        closed_at,
        -- The first known state of a customer starts when it was created, not when it was first seen.
        if(
            row_number() over (partition by customer_id order by dbt_valid_from) = 1,
            least(created_at, dbt_valid_from),
            dbt_valid_from
        ) as valid_from,
        dbt_valid_to as valid_to,
        dbt_valid_to is null as is_current

    from snapshot

)

select * from final
