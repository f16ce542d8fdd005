"""Whole-model pruning: masks and patterns (unstructured, N:M), magnitude, Wanda and SparseGPT."""
