"""The HTTP blueprints: recommend, events, health (liveness, readiness, metrics, docs)."""
