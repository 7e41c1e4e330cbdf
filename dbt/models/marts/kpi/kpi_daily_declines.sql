with

transactions as (

    select * from {{ ref('fct_transactions') }}
    where is_declined and {{ in_changed_days('occurred_on') }}

),

final as (

    select
        occurred_on,
        decline_reason,
        channel,
        count() as declined_count,
        sum(amount) as declined_amount,
        uniqExact(card_id) as cards_affected

    from transactions
    group by occurred_on, decline_reason, channel

)

select * from final
