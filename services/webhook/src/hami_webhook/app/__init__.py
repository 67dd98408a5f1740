"""Wiring of the webhook: settings, metrics, the aiohttp application and the command line."""
