with

source as (

    {{ cdc_current('bank', 'account') }}

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
        {{ lifecycle_columns() }}

    from source

)

select * from final
