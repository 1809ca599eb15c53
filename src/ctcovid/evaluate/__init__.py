"""Evaluation of trained checkpoints: metrics and reports (``report``), sweeps over training
settings with the papers' tables (``sweep``, ``tables``) and paired comparisons of runs
(``compare``). Import the submodules; this package imports nothing heavy on its own.
"""
