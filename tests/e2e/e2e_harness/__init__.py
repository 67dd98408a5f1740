"""Test harness for the end-to-end suite: the local control plane process, real nodes (the upstream kubelet with
containerd and runc, and a test double of the NVIDIA container toolkit), their images, and TLS/webhook helpers."""
