"""Capture: publication and slot, consistent snapshot, pgoutput decoding into change envelopes."""
