"""The batch layer's helpers: window conventions, spark-submit commands, a DuckDB reference.

The Spark programs themselves live in ``include/spark/`` (run with spark-submit); this package
holds what the DAG, the benchmark and the tests import. Nothing here imports pyspark or duckdb at
module level.
"""
