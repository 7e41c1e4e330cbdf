{#- The scope of one live evaluation (models/marts/fraud/live/): the cards changed by the CDC
    versions in ({low}, {high}] (query parameters of the views that call it), each with the
    first and last day those changes touch and the oldest commit among the card's versions in the
    range (triggered_at: an alert this evaluation raises was decided by one of those commits, so
    its latency counted from the oldest is never less than the true one). A transaction
    counts with every version it has (its old card and day too); a card change counts on the day
    of its close and the next, as for the batch marts (macros/incremental_changes.sql). -#}
{% macro live_scope() -%}
    select
        card_id,
        min(day) as first_day,
        max(day) as last_day,
        -- A card left only by an older version of a moved transaction: its newest commit.
        if(countIf(in_range) > 0, minIf(committed_at, in_range), max(committed_at)) as triggered_at

    from (
        select
            changes.card_id,
            toDate(changes.occurred_at) as day,
            changes.committed_at,
            changes.cdc_version > {low:UInt128} and changes.cdc_version <= {high:UInt128} as in_range

        from {{ ref('stg_transaction_changes') }} as changes
        where
            changes.card_id is not null
            and changes.txn_id in (
                select changed.txn_id from {{ ref('stg_transaction_changes') }} as changed
                where changed.cdc_version > {low:UInt128} and changed.cdc_version <= {high:UInt128}
            )

        union all

        select
            cards.card_id,
            addDays(toDate(cards.closed_at), arrayJoin([0, 1])) as day,
            cards.updated_at as committed_at,
            true as in_range

        from {{ ref('stg_cards') }} as cards
        where
            cards.closed_at is not null
            and cards.cdc_version > {low:UInt128} and cards.cdc_version <= {high:UInt128}
    )
    group by card_id
{%- endmacro %}
