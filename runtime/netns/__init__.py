"""A pod's network namespace: HTTP to the worker inside it (readiness, hooks) and the addresses
a restored worker had bound."""
