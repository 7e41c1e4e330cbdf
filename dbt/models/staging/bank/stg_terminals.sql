with

source as (

    {{ cdc_current('bank', 'terminal') }}

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
        {{ lifecycle_columns() }}

    from source

)

select * from final
