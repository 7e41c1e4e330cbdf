-- depends_on: {{ ref('stg_transaction_changes') }}
{#- Sorted by txn_id, the order rows arrive in (ids grow with time), so a full build inserts
    without re-sorting; the minmax index on occurred_on lets the marts' day filters skip the
    granules of other days. -#}
{{
    config(
        engine='MergeTree()',
        order_by='txn_id',
        indexes=[{'name': 'occurred_on_minmax', 'definition': 'occurred_on TYPE minmax GRANULARITY 1'}],
        pre_hook="{{ delete_changed_keys('stg_transaction_changes', 'txn_id') }}",
        post_hook="{{ record_cdc_watermark() }}",
    )
}}

-- The columns and joins are macros/transaction_facts.sql (the live alerts use them too).
-- A set block's text is a string handed to the macro, not layout sqlfluff can indent.
-- noqa: disable=LT02
{% set changed %}
    (
        select * from {{ ref('stg_transactions') }}
        {% if is_incremental() %}
        where txn_id in ({{ changed_keys('stg_transaction_changes', 'txn_id') }})
        {% endif %}
    )
{% endset %}
-- noqa: enable=LT02

{{ transaction_facts(changed, ref('stg_accounts'), ref('stg_cards'), ref('stg_terminals')) }}
