{#- The only model that joins detection output to the filler's ground truth. -#}
with

labels as (

    select
        txn_id,
        scenario

    from {{ ref('stg_fraud_labels') }}

),

alerts as (

    select distinct
        rule,
        txn_id

    from {{ ref('fct_fraud_alerts') }}

),

-- A rule is named after the scenario it targets: fraud_<scenario>.
alerts_by_scenario as (

    select
        rule,
        txn_id,
        replaceRegexpOne(rule, '^fraud_', '') as scenario

    from alerts

),

scenarios as (

    select scenario from labels
    union distinct
    select scenario from alerts_by_scenario

),

label_counts as (

    select
        scenario,
        count() as labelled

    from labels
    group by scenario

),

alert_counts as (

    select
        scenario,
        any(rule) as rule,
        count() as alerted

    from alerts_by_scenario
    group by scenario

),

hits as (

    select
        alerts_by_scenario.scenario,
        count() as true_positives

    from alerts_by_scenario
    inner join labels
        on
            alerts_by_scenario.txn_id = labels.txn_id
            and alerts_by_scenario.scenario = labels.scenario
    group by alerts_by_scenario.scenario

),

per_scenario as (

    select
        -- Four tables have `scenario`: ClickHouse would name this column `scenarios.scenario`.
        scenarios.scenario as scenario,  -- noqa: AL09
        coalesce(alert_counts.rule, concat('fraud_', scenarios.scenario)) as rule,
        coalesce(label_counts.labelled, 0) as labelled,
        coalesce(alert_counts.alerted, 0) as alerted,
        coalesce(hits.true_positives, 0) as true_positives

    from scenarios
    left join label_counts on scenarios.scenario = label_counts.scenario
    left join alert_counts on scenarios.scenario = alert_counts.scenario
    left join hits on scenarios.scenario = hits.scenario

),

overall as (

    select
        'overall' as scenario,
        'any' as rule,
        (select count() as n from labels) as labelled,
        (select uniqExact(txn_id) as n from alerts) as alerted,
        (
            select count() as n
            from (select distinct txn_id from alerts) as a
            inner join labels as l on a.txn_id = l.txn_id
        ) as true_positives

),

scored as (

    select * from per_scenario
    union all
    select * from overall

),

final as (

    select
        scenario,
        rule,
        toUInt64(labelled) as labelled,
        toUInt64(alerted) as alerted,
        toUInt64(true_positives) as true_positives,
        if(alerted = 0, null, round(true_positives / alerted, 4)) as precision,
        if(labelled = 0, null, round(true_positives / labelled, 4)) as recall,
        if(
            true_positives = 0,
            if(alerted = 0 and labelled = 0, null, 0),
            round(2 * true_positives / (alerted + labelled), 4)
        ) as f1

    from scored

)

select * from final
