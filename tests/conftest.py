"""Shared fixtures: where the real CT files live (../shared/data beside the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from repo_paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real CT files not found at {d} (set CTCOVID_SHARED_DATA)")
    return d
