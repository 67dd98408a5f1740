"""hami-scheduler-extender: the scheduler extender (issue 7) of the HAMi-compatible GPU sharing stack."""
