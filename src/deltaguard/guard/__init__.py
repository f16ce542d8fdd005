"""The compact guard: a small safety classifier built from the embedded model (data, pruning, INT4 QAT)."""
