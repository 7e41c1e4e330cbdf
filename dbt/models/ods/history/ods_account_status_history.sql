{{ status_history('snap_account_status', 'account_id') }}
