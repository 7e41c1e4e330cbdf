with

transactions as (

    select * from {{ ref('fct_transactions') }}
    where {{ in_changed_days('occurred_on') }}

),

final as (

    select
        occurred_on,
        channel,
        coalesce(mcc, 'none') as mcc,
        currency,
        count() as txn_count,
        countIf(is_approved) as approved_count,
        countIf(is_declined) as declined_count,
        sumIf(amount, is_approved) as approved_amount,
        if(countIf(is_approved) = 0, null, sumIf(amount, is_approved) / countIf(is_approved))
            as avg_approved_amount

    from transactions
    group by occurred_on, channel, mcc, currency

)

select * from final
