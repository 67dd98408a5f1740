"""Wiring and lifecycle of hami-lib-installer."""
