"""Two-stage recommendation models: data preparation, two-tower retrieval, DeepFM ranking,
baselines and full-ranking evaluation.

Modules that import TensorFlow (:mod:`two_tower`, :mod:`deepfm`) set ``TF_USE_LEGACY_KERAS=1``
before the import; the rest is numpy/scipy only, so importing this package is cheap.
"""
