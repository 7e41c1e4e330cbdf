with

cards as (

    select * from {{ ref('stg_cards') }}

),

final as (

    select * except (cdc_version) from cards

)

select * from final
