"""Wiring and lifecycle of hami-webhook."""
