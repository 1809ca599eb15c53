"""Assembling datasets: cohort manifests, importers, splits, the synthetic phantom cohort."""
