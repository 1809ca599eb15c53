"""Fixtures for training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_cohort import TINY_CONFIG, make_cohort


@pytest.fixture()
def tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    manifest = make_cohort(tmp_path / "cohort")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_CONFIG.format(manifest=manifest, epochs=3))
    return cfg, manifest
