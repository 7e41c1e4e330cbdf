with

source as (

    select * from {{ source('bank', 'terminal') }} final
    where _is_deleted = 0

),

final as (

    select
        terminal_id,
        cast(kind as String) as terminal_kind,
        merchant_name,
        cast(mcc as String) as mcc,
        city,
        cast(country as String) as country,
        lat,
        lon,
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
