"""I/O with the Kubernetes API: watch caches, pod patches, Bindings, Events, leader election."""
