-- The rule is macros/fraud_rules.sql; context: the changed days and the day either side
-- of them (windows are < 1 day).
{{ fraud_after_card_closed_alerts(
    ref('fct_transactions'),
    ref('ods_cards'),
    in_changed_days('occurred_on', 2),
    in_changed_days('toDate(occurred_at)', 1)
) }}
