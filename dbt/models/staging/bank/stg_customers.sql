with

source as (

    {{ cdc_current('bank', 'customer') }}

),

final as (

    select
        customer_id,
        {{ pseudonymise("concat(first_name, ' ', last_name)") }} as customer_name_hash,
        {{ pseudonymise('lower(email)') }} as email_hash,
        {{ pseudonymise('phone') }} as phone_hash,
        {{ pseudonymise('address') }} as address_hash,
        toYear(birth_date) as birth_year,
        city,
        cast(country as String) as country,
        -- about 1 km: enough for geography rules, too coarse to locate a home.
        toDecimal64(round(toFloat64(home_lat), 2), 2) as home_lat,
        toDecimal64(round(toFloat64(home_lon), 2), 2) as home_lon,
        cast(segment as String) as segment,
        {{ lifecycle_columns() }}

    from source

)

select * from final
