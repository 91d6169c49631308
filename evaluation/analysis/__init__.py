"""Analysis: read-only figures from the store (frames, metrics, the five-axis readiness verdict)."""
