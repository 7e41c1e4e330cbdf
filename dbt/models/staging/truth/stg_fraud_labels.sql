with

source as (

    select * from {{ source('truth', 'fraud_label') }} final
    where _is_deleted = 0

),

final as (

    select
        txn_id,
        cast(scenario as String) as scenario,
        episode_id

    from source

)

select * from final
