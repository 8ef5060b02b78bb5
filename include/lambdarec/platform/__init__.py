"""The local platform: Kafka, Redis, MLflow, Airflow, the speed layer and the web front started,
checked and stopped on 127.0.0.1.

``base`` is what a service is, one module per service family describes its processes (``kafka``,
``stores``, ``airflow``, ``speed``, ``web``), ``services`` composes them, ``processes`` spawns,
finds and stops one service's process group, ``manager`` runs them in order (Python API: ``up``,
``down``, ``status``), ``cli`` is ``lambdarec platform up|down|status|logs``. Local operations on
top: ``dag_run`` (a DAG run with ``dag.test()``), ``speed_control`` (the speed layer started
and stopped for the Airflow operator) and ``spark_cluster`` (a Spark standalone master and
workers on loopback, for the cluster test and the rehearsal). Only outer layers import this
package (the CLI, the demo, the Airflow plugins, the test harness); the core never does.
"""
