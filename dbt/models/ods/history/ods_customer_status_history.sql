{{ status_history('snap_customer_status', 'customer_id') }}
