{#- Rows of `relation` (a CTE with an `occurred_ms` column) with two window counts per
    `partition_by`: window_count, the rows in the `window_minutes` ending at this row, and
    burst_size, the largest window_count of any window that contains this row. A row belongs to a
    burst of at least N rows exactly when burst_size >= N. -#}
{% macro with_burst_size(relation, partition_by, window_minutes) -%}
    {%- set window_ms = window_minutes * 60 * 1000 -%}
    select
        *,
        max(window_count) over (
            partition by {{ partition_by }} order by occurred_ms
            range between current row and {{ window_ms }} following
        ) as burst_size

    from (
        select
            *,
            count() over (
                partition by {{ partition_by }} order by occurred_ms
                range between {{ window_ms }} preceding and current row
            ) as window_count

        from {{ relation }}
    )
{%- endmacro %}
