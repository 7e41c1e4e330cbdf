with

customers as (

    select * from {{ ref('stg_customers') }}

),

final as (

    select * except (cdc_version) from customers

)

select * from final
