"""hami-lib-installer: the lib installer (issue 10) of the HAMi-compatible GPU sharing stack."""
