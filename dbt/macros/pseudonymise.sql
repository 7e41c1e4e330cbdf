{#- Salted SHA-256 of a PII value, hex. The salt comes from BANKDE_PII_SALT; the dev default is
    public, so any real deployment sets its own (docs/dbt.md). Equal inputs give equal tokens, so
    joins and distinct counts still work, but the clear value never leaves staging. -#}
{% macro pseudonymise(column) -%}
    lower(hex(SHA256(concat({{ pii_salt() }}, '|', toString({{ column }})))))
{%- endmacro %}

{% macro pii_salt() -%}
    '{{ env_var("BANKDE_PII_SALT", "bankde-dev-salt-not-secret") | replace("\\", "\\\\") | replace("'", "\\'") }}'
{%- endmacro %}
