{#- Snapshot bookkeeping in the same type as the source timestamps (DateTime64(6, 'UTC')), not
    second-precision DateTime as dbt-clickhouse has it; serves the chdb and clickhouse targets. -#}
{% macro clickhouse__snapshot_get_time() -%}
    now64(6, 'UTC')
{%- endmacro %}
