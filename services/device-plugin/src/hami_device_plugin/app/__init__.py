"""Wiring and lifecycle of hami-device-plugin."""
