{#- SCD2 rows from a status snapshot (check strategy on status, closed_at; valid_from = the
    source's change time). The first state starts at created_at. An entity first seen already
    closed gets the state before its close inferred as 'active' from created_at to closed_at:
    the close time is exact (closed_at), the earlier status is an assumption the snapshot could
    not observe. -#}
{% macro status_history(snapshot_name, key) %}

with

snapshot as (

    select * from {{ ref(snapshot_name) }}

),

versions as (

    select
        *,
        row_number() over (partition by {{ key }} order by dbt_valid_from) as version_number

    from snapshot

),

observed as (

    select
        {{ key }},
        status,
        is_closed,
        closed_at,
        if(version_number = 1 and not is_closed, least(created_at, dbt_valid_from), dbt_valid_from)
            as valid_from,
        dbt_valid_to as valid_to,
        dbt_valid_to is null as is_current,
        false as is_inferred

    from versions

),

inferred_before_close as (

    select
        {{ key }},
        'active' as status,
        false as is_closed,
        cast(null as Nullable(DateTime64(6, 'UTC'))) as closed_at,
        created_at as valid_from,
        dbt_valid_from as valid_to,
        false as is_current,
        true as is_inferred

    from versions
    -- Qualified: ClickHouse would resolve is_closed to this select's own alias.
    where versions.version_number = 1
        and versions.is_closed
        and versions.created_at < versions.dbt_valid_from

),

final as (

    select * from observed
    union all
    select * from inferred_before_close

)

select * from final

{% endmacro %}
