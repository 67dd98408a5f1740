"""hami-webhook: the mutating admission webhook (issue 9) of the HAMi-compatible GPU sharing stack."""
