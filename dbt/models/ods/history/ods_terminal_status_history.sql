{{ status_history('snap_terminal_status', 'terminal_id') }}
