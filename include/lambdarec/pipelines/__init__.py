"""Task bodies of the Airflow DAGs: each DAG task is one call into a function here."""
