{#- Layers are ClickHouse databases named <prefix><layer> (stg, ods, marts), so that a test can
    run a whole pipeline inside one warehouse under its own prefix, like raw and truth. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ env_var('BANKDE_WH_PREFIX', '') }}{{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
