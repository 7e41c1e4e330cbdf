{#- Step 2's output of one live evaluation (bankde.transform.live): an empty table of
    fraud_live_facts's columns that dbt creates and the evaluation empties and fills; builds
    append nothing to it (tag live_scratch: selected builds leave it out). -#}
{{ config(materialized='incremental', incremental_strategy='append', order_by='tuple()', tags=['live_scratch']) }}

select * from {{ ref('fraud_live_facts') }}
where 0
