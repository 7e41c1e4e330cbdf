{#- Incremental facts over CDC tables. A key has changed when the landing table has a version of
    it in (the model's watermark, the version pinned for this run] (see below). The model
    (1) deletes the changed keys from the target in a pre-hook, then (2) appends their current
    state (FINAL, not deleted), and (3) records the pinned version as its watermark. Updated keys
    are replaced, deleted keys stay deleted, new keys arrive. Both statements select the keys
    with the same two literal bounds, so rows CDC lands during the run change neither set: a key
    first changed after the pin waits for the next run. A key in the set may be appended in a
    state newer than the pin; its newer version is above the recorded watermark, so the next run
    replaces it again (same result). -#}

{% macro changed_keys(changes_model, key) -%}
    {%- set bounds = cdc_bounds() -%}
    select {{ key }} from {{ ref(changes_model) }}
    where cdc_version > {{ bounds[0] }} and cdc_version <= {{ bounds[1] }}
{%- endmacro %}

{% macro delete_changed_keys(changes_model, key) -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ key }} in ({{ changed_keys(changes_model, key) }})
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{#- Incremental marts over days. A run first pins the highest CDC version landed so far
    (on-run-start: a '__run__' row in <prefix>marts.dbt_cdc_watermarks; the var cdc_pin_version
    pins a given version instead, to replay changes up to it). Each mart then
    recomputes the days touched by changes in (its own watermark, pinned version], and records
    the pinned version as its watermark in a post-hook. Pinning keeps the compile, the delete and
    the watermark of one run consistent while CDC keeps landing rows. -#}

{% macro cdc_watermarks() -%}
    `{{ env_var('BANKDE_WH_PREFIX', '') }}marts`.dbt_cdc_watermarks
{%- endmacro %}

{% macro pin_cdc_watermark() -%}
    {#- on-run-start: run pin_cdc_watermark_statements in order (nothing is left for the hook
        itself to execute). dbt also renders hooks for commands that never execute them
        (compile, docs generate, show, list): those must not pin, so only the commands that run
        on-run-start do. -#}
    {%- if execute and flags.WHICH in ['run', 'build', 'test', 'seed', 'snapshot', 'retry', 'freshness'] -%}
        {%- for statement in pin_cdc_watermark_statements() -%}
            {%- do run_query(statement) -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{% macro pin_cdc_watermark_statements() -%}
    {#- Besides the pinned version, it collects the days touched by the changes above the lowest
        watermark any mart recorded, with the newest version per day, into dbt_cdc_changed_days:
        each mart then picks the days whose newest change is above its own watermark, without
        scanning the landing tables again. -#}
    {%- set marts = "`" ~ env_var('BANKDE_WH_PREFIX', '') ~ "marts`" -%}
    {%- set transactions = source('bank', 'transaction') -%}
    {%- set cards = source('bank', 'card') -%}
    {#- Only the models' own watermarks: the rows of macros/changed_rows_tests.sql are named
        'test:...' and 'rebuilt:...'. -#}
    {%- set low = "(select coalesce(minIf(cdc_version, model != '__run__' and position(model, ':') = 0), toUInt128(0)) from (select model, argMax(cdc_version, written_at) as cdc_version from " ~ cdc_watermarks() ~ " group by model))" -%}
    {#- The sink writes a batch's tables one after another and its offset last, so a version is
        complete only at or below the newest recorded offset (the largest version of its commit
        LSN, macros/cdc_version.sql): cap the pin there, or a run could pin one table's new
        version while another table's rows of the same batch are not visible yet and then skip
        them for good. Without offsets (raw loaded by other means) the newest landed version is
        the pin. -#}
    {%- set offset_cap = "(select if(count() = 0, toUInt128('340282366920938463463374607431768211455'), "
        ~ cdc_max_version_at("max(lsn)") ~ ") from " ~ source('meta', 'cdc_offsets') ~ ")" -%}
    {%- set pin = "least(greatest((select coalesce(max(_version), toUInt128(0)) from " ~ transactions ~ "), "
        ~ "(select coalesce(max(_version), toUInt128(0)) from " ~ cards ~ ")), " ~ offset_cap ~ ")" -%}
    {%- if var('cdc_pin_version', none) is not none -%}
        {%- set pin = "toUInt128('" ~ (var('cdc_pin_version') | int) ~ "')" -%}
    {%- endif -%}
    {%- set pinned = "(select argMaxIf(cdc_version, written_at, model = '__run__') from " ~ cdc_watermarks() ~ ")" -%}
    {{ return([
        "create database if not exists " ~ marts,
        "create table if not exists " ~ cdc_watermarks() ~ " (model String, cdc_version UInt128, "
            ~ "written_at DateTime64(6, 'UTC') default now64(6)) "
            ~ "engine = ReplacingMergeTree(written_at) order by model",
        "insert into " ~ cdc_watermarks() ~ " (model, cdc_version) select '__run__', " ~ pin,
        "create or replace table " ~ marts ~ ".dbt_cdc_changed_days engine = MergeTree order by tuple() as "
            ~ "select day, max(cdc_version) as cdc_version from ("
            ~ "select toDate(occurred_at) as day, _version as cdc_version from " ~ transactions ~ " "
            ~ "where _version > " ~ low ~ " and _version <= " ~ pinned
            ~ " union all select addDays(toDate(closed_at), arrayJoin([0, 1])) as day, _version as cdc_version from "
            ~ cards ~ " where closed_at is not null and _version > " ~ low ~ " and _version <= " ~ pinned
            ~ ") group by day",
    ]) }}
{%- endmacro %}

{% macro cdc_bounds() -%}
    {#- [low, high] as SQL literals: this model's watermark and the version pinned by the run. -#}
    {%- if execute and is_incremental() -%}
        {%- set row = run_query(
            "select toString(argMaxIf(cdc_version, written_at, model = '__run__')), "
            ~ "toString(argMaxIf(cdc_version, written_at, model = '" ~ this.identifier ~ "')), "
            ~ "countIf(model = '" ~ this.identifier ~ "') from " ~ cdc_watermarks()
        ).rows[0] -%}
        {%- set low = row[1] if row[2] > 0 else '0' -%}
        {{ return(["toUInt128('" ~ low ~ "')", "toUInt128('" ~ row[0] ~ "')"]) }}
    {%- else -%}
        {{ return(["toUInt128(0)", "toUInt128(0)"]) }}
    {%- endif -%}
{%- endmacro %}

{% macro changed_days(spill_days=0) -%}
    {#- Literal list of the days whose rows may change: days with a transaction changed between
        this model's watermark and the pinned version (old and new versions, deletes included),
        widened by spill_days either side, plus the day of each card close and the next one (they
        matter to fraud_after_card_closed). Collected once per run by
        pin_cdc_watermark_statements. -#}
    {%- set bounds = cdc_bounds() -%}
    {%- set rows = run_query(
        "select toString(d) from (select distinct addDays(day, arrayJoin(range(-" ~ spill_days ~ ", "
        ~ (spill_days + 1) ~ "))) as d from `" ~ env_var('BANKDE_WH_PREFIX', '') ~ "marts`.dbt_cdc_changed_days "
        ~ "where cdc_version > " ~ bounds[0] ~ ") order by d"
    ).rows if execute else [] -%}
    {%- if rows | length == 0 -%}
        toDate(0)
    {%- else -%}
        {%- for row in rows -%}toDate('{{ row[0] }}'){{ ", " if not loop.last }}{%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{% macro delete_changed_days(day_expression, spill_days=0) -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ day_expression }} in ({{ changed_days(spill_days) }})
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{% macro record_cdc_watermark() -%}
    insert into {{ cdc_watermarks() }} (model, cdc_version)
    select '{{ this.identifier }}', argMaxIf(cdc_version, written_at, model = '__run__')
    from {{ cdc_watermarks() }}
{%- endmacro %}

{% macro in_changed_days(day_expression, spill_days=0) -%}
    {%- if is_incremental() -%}
        {{ day_expression }} in ({{ changed_days(spill_days) }})
    {%- else -%}
        1
    {%- endif -%}
{%- endmacro %}
