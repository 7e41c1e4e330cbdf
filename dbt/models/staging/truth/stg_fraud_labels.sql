with

source as (

    {{ cdc_current('truth', 'fraud_label') }}

),

final as (

    select
        txn_id,
        cast(scenario as String) as scenario,
        episode_id

    from source

)

select * from final
