with

source as (

    {{ cdc_current('truth', 'fraud_episode') }}

),

final as (

    select
        episode_id,
        cast(scenario as String) as scenario,
        customer_id,
        card_id,
        terminal_id,
        started_at,
        ended_at,
        params

    from source

)

select * from final
