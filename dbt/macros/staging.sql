{#- The opening of every stg_ model over a CDC landing table: the current row of each key (the
    newest version, FINAL) that is not deleted. -#}
{% macro cdc_current(source_name, table_name) -%}
    select * from {{ source(source_name, table_name) }} final
    where _is_deleted = 0
{%- endmacro %}

{#- Lifecycle columns shared by the entity stg_ models (customer, account, card, terminal).
    status_changed_at is when the current status began: the close time for a close, else the
    row's last update; the status snapshots and their SCD2 history take validity from it. -#}
{% macro lifecycle_columns() -%}
    cast(status as String) as status,
    cast(status as String) = 'closed' as is_closed,
    created_at,
    updated_at,
    closed_at,
    coalesce(closed_at, updated_at) as status_changed_at,
    _version as cdc_version
{%- endmacro %}
