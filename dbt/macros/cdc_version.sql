{#- GENERATED from bankde.cdc.version (POS_BITS = 32) by `bankde dbt macros`: do not edit.
    _version = commit LSN in the high bits, position inside the transaction in the low
    POS_BITS; the arguments are SQL expressions. -#}

{#- UInt128 version of the change at position `pos` of the transaction committed at `lsn`. -#}
{% macro cdc_make_version(lsn, pos) -%}
    bitOr(bitShiftLeft(toUInt128({{ lsn }}), 32), toUInt128({{ pos }}))
{%- endmacro %}

{#- UInt64 commit LSN a version was made from. -#}
{% macro cdc_version_lsn(cdc_version) -%}
    toUInt64(bitShiftRight({{ cdc_version }}, 32))
{%- endmacro %}

{#- The largest version any change committed at `lsn` can have. -#}
{% macro cdc_max_version_at(lsn) -%}
    bitOr(bitShiftLeft(toUInt128({{ lsn }}), 32), toUInt128(4294967295))
{%- endmacro %}
