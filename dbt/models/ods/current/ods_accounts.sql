with

accounts as (

    select * from {{ ref('stg_accounts') }}

),

final as (

    select * except (cdc_version) from accounts

)

select * from final
