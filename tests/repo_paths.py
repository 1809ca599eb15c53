"""Paths shared by tests (a plain module: several test folders have their own conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("CTCOVID_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
