"""lambdarec's Airflow operators and hooks (a unique package name, so it never shadows another)."""
