"""Test harness for the end-to-end suite: the local control plane process, the kubelet stand-in (a test double
for the kubelet, which cannot run here), the device-plugin API stubs and TLS/webhook helpers."""
