"""Inference: the trained models' forward passes in numpy, as serving and evaluation run them.

The two-tower's query and item towers and the DeepFM ranker, loaded from the exports that training
(:mod:`lambdarec.models`) writes, with the one function that builds the ranker's feature rows
(:mod:`lambdarec.inference.ranker_rows`), which training calls too. Nothing here imports
TensorFlow or Flask: a serving worker loads these in milliseconds and holds no TF runtime.
"""
