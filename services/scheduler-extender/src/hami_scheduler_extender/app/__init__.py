"""Wiring and lifecycle of hami-scheduler-extender."""
