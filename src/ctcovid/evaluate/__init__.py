"""Evaluation of trained checkpoints (metrics, reports); sweeps and comparisons build on it."""
