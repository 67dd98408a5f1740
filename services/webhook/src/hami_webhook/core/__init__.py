"""Pure decision logic of the webhook: review parsing, mutation rules, JSONPatch building (no I/O, no
asyncio, no aiohttp), so each rule is testable with plain dictionaries."""
