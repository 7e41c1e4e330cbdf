with

accounts as (

    select * from {{ ref('stg_accounts') }}

),

final as (

    -- Every stg_ column but the CDC version: current state, not its bookkeeping.
    select
        account_id,
        customer_id,
        iban_hash,
        iban_country,
        account_kind,
        currency,
        balance,
        overdraft_limit,
        status,
        is_closed,
        created_at,
        updated_at,
        closed_at,
        status_changed_at

    from accounts

)

select * from final
