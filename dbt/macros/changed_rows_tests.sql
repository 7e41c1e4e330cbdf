{#- Data tests that check only the rows changed since they last passed, on the large incremental
    models that say how (docs/freshness.md, "Tests of the changed rows").

    A model opts in with `meta: {test_changed_rows: {key: <column>, changes: <model>}}`: `changes`
    is a model with every landed version of the rows (`key`, `cdc_version`, deletes included).
    Each generic test of that model then reads, instead of the whole model, its rows whose key
    has a version above the run pin recorded the last time this test passed (on-run-end,
    record_passed_tests): every row with that key, so a `unique` test still counts an old copy
    against a new one. A row that did not change since then passed this very test then, and an
    incremental model rewrites only the keys that changed; so a test fails exactly when the full
    test would, as long as nothing else writes the model. The scope falls back to the whole
    model when the test never passed, on --full-refresh, and when any model the test reads (the
    tested one or a `to` of a relationship) was rebuilt from scratch since it last passed
    (record_rebuild, a pre-hook of every model). -#}

{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- set scope = changed_rows_scope(relation) -%}
    {%- set conditions = [] -%}
    {%- if where -%}{%- do conditions.append('(' ~ where ~ ')') -%}{%- endif -%}
    {%- if scope -%}{%- do conditions.append(scope) -%}{%- endif -%}
    {%- if conditions -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ conditions | join(' and ') ~ ') dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}

{% macro changed_rows_scope(relation) -%}
    {#- '' (the whole model) or the condition on `relation` picking the keys changed since this
        test last passed. -#}
    {#- Only where tests run after on-run-start (which creates the watermarks table): dbt
        compile, docs and show read the whole model. -#}
    {%- if not execute or flags.FULL_REFRESH or model.resource_type != 'test'
        or flags.WHICH not in ['build', 'test', 'retry'] -%}
        {{ return('') }}
    {%- endif -%}
    {%- set found = namespace(spec=none, reads=[]) -%}
    {%- for uid in model.depends_on.nodes if uid in graph.nodes -%}
        {%- set node = graph.nodes[uid] -%}
        {%- do found.reads.append(node.name) -%}
        {%- if node.alias == relation.identifier and (node.config.meta or {}).get('test_changed_rows') -%}
            {%- set found.spec = node.config.meta.test_changed_rows -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if found.spec is none -%}
        {{ return('') }}
    {%- endif -%}
    {%- set changes = namespace(relation=none) -%}
    {%- for node in graph.nodes.values() if node.resource_type == 'model' and node.name == found.spec.changes -%}
        {%- set changes.relation = node.relation_name -%}
    {%- endfor -%}
    {%- if changes.relation is none -%}
        {{ exceptions.raise_compiler_error("test_changed_rows of " ~ relation ~ ": no model " ~ found.spec.changes) }}
    {%- endif -%}
    {%- set test_key = 'test:' ~ model.unique_id -%}
    {%- set rebuilt = [] -%}
    {%- for name in found.reads -%}{%- do rebuilt.append("'rebuilt:" ~ name ~ "'") -%}{%- endfor -%}
    {%- set row = run_query(
        "select countIf(model = '" ~ test_key ~ "') > 0 and maxIf(written_at, model = '" ~ test_key
        ~ "') > maxIf(written_at, model in (" ~ rebuilt | join(', ') ~ ")), "
        ~ "toString(argMaxIf(cdc_version, written_at, model = '" ~ test_key ~ "')) from "
        ~ cdc_watermarks()
    ).rows[0] -%}
    {%- if not row[0] -%}
        {{ return('') }}
    {%- endif -%}
    {#- A null key is in no key set: such rows stay in scope (not_null on the key). -#}
    {{ return("(" ~ found.spec.key ~ " is null or " ~ found.spec.key ~ " in (select " ~ found.spec.key ~ " from " ~ changes.relation
        ~ " where cdc_version > toUInt128('" ~ row[1] ~ "')))") }}
{%- endmacro %}

{% macro record_rebuild() -%}
    {#- Pre-hook of every model: a table built from scratch (not an incremental run, not a view:
        a view's rows are its sources') may differ anywhere, so the scoped tests reading it check
        it whole next time. -#}
    {%- if execute and model.config.materialized != 'view' and not (model.config.materialized == 'incremental' and is_incremental()) -%}
        insert into {{ cdc_watermarks() }} (model, cdc_version) select 'rebuilt:{{ model.name }}', 0
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{% macro record_passed_tests() -%}
    {#- on-run-end: every test that passed records the version the run pinned, the low bound of
        the rows it checks next time; a failed test keeps its old one, so it checks them again. -#}
    {%- if execute and flags.WHICH in ['build', 'test'] -%}
        {%- set passed = [] -%}
        {%- for result in results if result.node.resource_type == 'test' and result.status == 'pass' -%}
            {%- do passed.append("'test:" ~ result.node.unique_id ~ "'") -%}
        {%- endfor -%}
        {%- if passed -%}
            {%- do run_query(
                "insert into " ~ cdc_watermarks() ~ " (model, cdc_version) select name, pin from "
                ~ "(select argMaxIf(cdc_version, written_at, model = '__run__') as pin from "
                ~ cdc_watermarks() ~ ") array join [" ~ passed | join(', ') ~ "] as name"
            ) -%}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}

{#- dbt's relationships test as an anti-join that reads only the parent rows the child names
    (ClickHouse's left join would hash the whole parent: 10M rows for fct_transactions). Same
    rows fail: every non-null child value absent from the parent. -#}
{% macro clickhouse__test_relationships(model, column_name, to, field) -%}
    {{ bankde_test_relationships(model, column_name, to, field) }}
{%- endmacro %}

{% macro chdb__test_relationships(model, column_name, to, field) -%}
    {{ bankde_test_relationships(model, column_name, to, field) }}
{%- endmacro %}

{% macro bankde_test_relationships(model, column_name, to, field) %}

with

child as (

    select {{ column_name }} as from_field
    from {{ model }}
    where {{ column_name }} is not null

)

select from_field
from child
where from_field not in (
    select {{ field }} from {{ to }}
    where {{ field }} in (select from_field from child)
)

{% endmacro %}
