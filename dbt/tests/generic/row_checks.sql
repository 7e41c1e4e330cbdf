{#- Row invariants of `model` as one test (one query, one dbt node instead of one per check):
    `checks` maps a check's name to a predicate every row must satisfy. A row fails a check when
    its predicate is false; NULL passes, as in dbt's expression_is_true and accepted_values, so a
    not_null check is `<column> is not null`. Each failing row comes back with the names of the
    checks it fails (`failed_checks`): `dbt build --store-failures` keeps them. -#}
{% test row_checks(model, key, checks) %}

with

checked as (

    select
        {{ key }} as row_key,
        arrayFilter(
            name -> name != '',
            [
                {%- for name, predicate in checks.items() %}
                    if(not ({{ predicate }}), '{{ name }}', ''){{ "," if not loop.last }}
                {%- endfor %}
            ]
        ) as failed_checks

    from {{ model }}

)

select row_key, failed_checks
from checked
where notEmpty(failed_checks)

{% endtest %}
