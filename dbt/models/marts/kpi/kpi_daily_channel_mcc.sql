with

transactions as (

    -- Rows without a terminal have no MCC: one 'none' bucket for them.
    select
        * except (mcc),
        coalesce(mcc, 'none') as mcc

    from {{ ref('fct_transactions') }}
    where {{ in_changed_days('occurred_on') }}

),

final as (

    select
        occurred_on,
        channel,
        mcc,
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
