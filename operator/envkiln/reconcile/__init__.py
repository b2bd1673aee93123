"""Reconcilers: fetch through the adapters, call a pure decision, write the result."""
