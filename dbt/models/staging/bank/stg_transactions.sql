with

source as (

    {{ cdc_current('bank', 'transaction') }}

),

final as (

    select
        txn_id,
        txn_ref,
        account_id,
        card_id,
        terminal_id,
        cast(txn_type as String) as txn_type,
        cast(status as String) as status,
        cast(decline_reason as Nullable(String)) as decline_reason,
        amount,
        cast(currency as String) as currency,
        balance_after,
        description,
        occurred_at,
        created_at,
        updated_at,
        _version as cdc_version,
        cast(status as String) = 'approved' as is_approved,
        cast(status as String) = 'declined' as is_declined,
        cast(txn_type as String) in ('purchase', 'withdrawal', 'transfer', 'fee') as is_debit

    from source

)

select * from final
