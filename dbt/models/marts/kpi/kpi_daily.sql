with

transactions as (

    select * from {{ ref('fct_transactions') }}
    where {{ in_changed_days('occurred_on') }}

),

final as (

    select
        occurred_on,
        currency,
        count() as txn_count,
        countIf(is_approved) as approved_count,
        countIf(is_declined) as declined_count,
        countIf(status = 'reversed') as reversed_count,
        round(countIf(is_declined) / count(), 4) as decline_rate,
        sumIf(amount, is_approved and is_debit) as approved_debit_amount,
        sumIf(amount, is_approved and not is_debit) as approved_credit_amount,
        sumIf(amount, is_declined) as declined_amount,
        uniqExact(card_id) as active_cards,
        uniqExact(account_id) as active_accounts

    from transactions
    group by occurred_on, currency

)

select * from final
