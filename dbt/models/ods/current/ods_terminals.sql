with

terminals as (

    select * from {{ ref('stg_terminals') }}

),

final as (

    select * except (cdc_version) from terminals

)

select * from final
