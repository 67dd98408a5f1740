"""Pure scheduling logic: values, request resolution, fit, scores and the usage cache (no I/O)."""
