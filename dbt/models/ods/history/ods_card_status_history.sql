{{ status_history('snap_card_status', 'card_id') }}
