with

source as (

    {{ cdc_current('bank', 'card') }}

),

final as (

    select
        card_id,
        account_id,
        customer_id,
        cast(pan_hash as String) as pan_hash,
        cast(pan_last4 as String) as pan_last4,
        cast(network as String) as network,
        expires_on,
        daily_limit,
        {{ lifecycle_columns() }}

    from source

)

select * from final
