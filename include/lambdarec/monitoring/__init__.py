"""Model monitoring: distribution drift (PSI, KL divergence) against the champion's training
reference, training/serving skew, and the daily drift report.

* :mod:`lambdarec.monitoring.drift` — bins fixed from a reference, histograms, PSI and KL, the
  watch/act thresholds; pure numpy, no I/O.
* :mod:`lambdarec.monitoring.profile` — the reference profile saved with each trained model (an
  MLflow artifact of its run) and loaded from the champion.
* :mod:`lambdarec.monitoring.sources` — the current data: the lake's events of the window and
  the impression log (Kafka), turned into the frames a profile describes.
* :mod:`lambdarec.monitoring.skew` — rebuilds served feature vectors point-in-time from Feast's
  offline store and counts mismatches per feature.
* :mod:`lambdarec.monitoring.report` — the JSON result and the HTML report with plots and trend.
* :mod:`lambdarec.monitoring.run` — what the ``drift_monitoring`` DAG calls, and the retraining
  guard.
* :mod:`lambdarec.monitoring.ab` — the A/B readout's statistics: ratio metrics per variant with
  user-clustered intervals and tests against control; pure numpy/pandas.
* :mod:`lambdarec.monitoring.ab_report` — the readout's ``readout.json`` and ``readout.html``.
* :mod:`lambdarec.monitoring.guardrail` — switches off a variant significantly worse than control
  on conversion (the override file serving re-reads).
"""
