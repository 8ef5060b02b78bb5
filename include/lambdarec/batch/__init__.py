"""The batch layer's helpers: window conventions, spark-submit commands, a DuckDB reference, and
the session tables (sequential rules, session-kNN's indexes) computed in numpy.

The Spark programs themselves live in ``include/spark/`` (run with spark-submit); this package
holds what the DAG, the benchmark, offline evaluation and the tests import. Nothing here imports
pyspark or duckdb at module level.
"""
