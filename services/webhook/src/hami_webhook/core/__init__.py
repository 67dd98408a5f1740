"""Pure decision logic of the webhook: review parsing, mutation rules, JSONPatch building.

Nothing in this package does I/O, touches asyncio or imports aiohttp; every function is a
function of its arguments, so each rule is testable with plain dictionaries.
"""
