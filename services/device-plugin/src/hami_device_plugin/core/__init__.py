"""Pure decision logic of the device plugin: no I/O, no asyncio, no gRPC, no Kubernetes client."""
