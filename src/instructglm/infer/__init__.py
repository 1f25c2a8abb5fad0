"""infer stage."""
