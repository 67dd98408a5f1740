"""I/O of the device plugin: NVML, the Kubernetes API, the filesystem and the generated gRPC stubs."""
