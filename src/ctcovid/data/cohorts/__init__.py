"""Importers for public COVID CT cohorts, registered by name (``ctcovid import KIND ROOT``)."""

from ctcovid.data.cohorts import cc_ccii, cncb, covid_ct_md, folder, medmnist, mosmed  # noqa: F401  (registers)
from ctcovid.data.cohorts.base import ImportResult, get_importer, list_importers, probe_scan


def import_cohort(kind: str, root: str, **options: object) -> ImportResult:
    """Run the importer registered as ``kind`` on ``root`` with importer-specific options."""
    return get_importer(kind)(root, **options)


__all__ = ["ImportResult", "get_importer", "import_cohort", "list_importers", "probe_scan"]
