"""hami-scheduler-extender: the scheduler extender (issue 7) of the HAMi-compatible GPU sharing stack."""

__version__ = "0.1.0"
