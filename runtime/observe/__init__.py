"""What rewarm tells: the event log and runtime log, Prometheus metrics, transfer progress."""
