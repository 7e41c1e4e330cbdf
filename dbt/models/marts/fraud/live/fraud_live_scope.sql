-- Parameterised view (low, high): the cards and days one live evaluation re-decides.
{{ live_scope() }}
