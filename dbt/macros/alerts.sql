{#- The leading columns of every fraud_<scenario> rule model, part of the contract that
    fct_fraud_alerts unions: the rule (the model's name, spelled out because a unit test renders
    the model under its own name) and the alerted transaction. Each rule follows them with its
    own score in (0, 1] and its evidence (JSON). -#}
{% macro alert_columns(rule) -%}
    '{{ rule }}' as rule,
    txn_id,
    card_id,
    customer_id,
    occurred_at
{%- endmacro %}
