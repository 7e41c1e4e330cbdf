"""The original filler entry point: `python new_events.py` runs `bankde fill` configured by N_NEW_TXNS, BACKFILL_DAYS, BACKFILL_TXNS_PER_DAY and FRAUD_SHARE."""

from __future__ import annotations

import sys

from bankde.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "fill", *sys.argv[1:]]
    main()
