"""Candidate retrieval: the item-embedding vector index that serving queries (Milvus)."""
