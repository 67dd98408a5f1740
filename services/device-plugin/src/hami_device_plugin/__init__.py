"""hami-device-plugin: the device plugin (issue 8) of the HAMi-compatible GPU sharing stack."""
