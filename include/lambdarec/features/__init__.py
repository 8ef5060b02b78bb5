"""The feature store: Feast definitions (``feature_repo/``) rendered for the current settings.

Import :mod:`lambdarec.features.store` for the calls (``apply``, ``materialize``, online and
historical retrieval, push); this package itself imports nothing heavy. Code of lambdarec calls
:func:`lambdarec.features.feastlib.import_feast` before importing ``feast`` (its import sets
Prometheus variables, taken back there).
"""
