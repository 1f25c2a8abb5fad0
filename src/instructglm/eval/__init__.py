"""eval stage: metrics over predictions."""
