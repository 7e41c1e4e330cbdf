with

source as (

    select * from {{ source('bank', 'card') }} final
    where _is_deleted = 0

),

final as (

    select
        card_id,
        account_id,
        customer_id,
        {{ pseudonymise('pan') }} as pan_hash,
        cast(pan_last4 as String) as pan_last4,
        cast(network as String) as network,
        expires_on,
        daily_limit,
        cast(status as String) as status,
        cast(status as String) = 'closed' as is_closed,
        created_at,
        updated_at,
        closed_at,
        coalesce(closed_at, updated_at) as status_changed_at,
        _version as cdc_version

    from source

)

select * from final
