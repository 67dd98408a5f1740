"""I/O adapters of the webhook: the TLS context with certificate hot reload."""
