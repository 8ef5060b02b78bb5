"""The local platform: Kafka, Redis, MLflow and Airflow started, checked and stopped on 127.0.0.1.

``services`` describes each process, ``manager`` runs them (Python API: ``up``, ``down``,
``status``), ``cli`` is ``lambdarec platform up|down|status|logs``.
"""
