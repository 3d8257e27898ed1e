"""What Microsoft 365 is: the policy model, the built-in table, loading and matching."""
