with

source as (

    select * from {{ source('bank', 'account') }} final
    where _is_deleted = 0

),

final as (

    select
        account_id,
        customer_id,
        {{ pseudonymise('iban') }} as iban_hash,
        substring(iban, 1, 2) as iban_country,
        cast(kind as String) as account_kind,
        cast(currency as String) as currency,
        balance,
        overdraft_limit,
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
