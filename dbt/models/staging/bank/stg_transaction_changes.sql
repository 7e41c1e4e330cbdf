{#- Every landed version of every transaction, deletes included (no FINAL): what the incremental
    fct_transactions reads to find the keys changed since its watermark. -#}
with

source as (

    select * from {{ source('bank', 'transaction') }}

),

final as (

    select
        txn_id,
        card_id,
        occurred_at,
        _version as cdc_version,
        _source_ts as committed_at,
        cast(_op as String) as cdc_op,
        _is_deleted = 1 as is_deleted

    from source

)

select * from final
