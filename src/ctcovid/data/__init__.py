"""Assembling datasets: cohort manifests, importers, splits, the preprocessing cache, samplers.

The synthetic cohort lives in :mod:`ctcovid.synth`; nothing here imports it.
"""
