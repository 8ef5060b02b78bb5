"""Data-quality gates: Great Expectations suites for the lake, built from code and versioned.

``lambdarec.quality.runner.validate(table, day, settings)`` is the call a DAG task makes; it
returns a :class:`~lambdarec.quality.report.ValidationReport` and builds Data Docs. Importing
this package does not import Great Expectations (a ~10 s import).
"""
