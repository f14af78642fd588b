"""The engine `probe run` and `probe serve` share: targets to results to parity to a report."""
