"""The data layer: the synthetic clickstream, dataset loaders and the event lake.

* :mod:`lambdarec.data.generator`: ``GeneratorConfig``, ``iter_event_batches``, ``generate_events``,
  ``generate_catalog``.
* :mod:`lambdarec.data.loaders`: ``load_taobao``, ``load_diginetica_raw``, ``load_srgnn``,
  ``expand_sessions``, ``load_interactions``.
* :mod:`lambdarec.data.lake`: ``write_events``, ``read_events``, ``iter_events``, ``list_dates``,
  ``date_counts``, ``write_catalog``, ``read_catalog``.
* :mod:`lambdarec.data.cli`: the ``lambdarec data`` commands.

Every producer speaks the canonical event table (``lambdarec.events.canonical_arrow_schema``).
Nothing is imported here, so ``import lambdarec.data`` stays cheap.
"""
