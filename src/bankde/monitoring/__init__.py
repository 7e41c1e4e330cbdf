"""Monitoring: reconcile source vs warehouse, status and reports."""
