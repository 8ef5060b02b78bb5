"""lambdarec: a Lambda-architecture real-time e-commerce recommender (the importable core)."""

__version__ = "0.1.0"
