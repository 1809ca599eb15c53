"""What a run writes besides checkpoints: metrics.jsonl, train.log, TensorBoard events."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any


def tensorboard(out: Path) -> Any:
    """A TensorBoard writer in the run folder when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def fmt(record: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch"
    )


def file_handler(path: Path) -> logging.Handler:
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return h


class RunLog:
    """``train.log``: the package's INFO records go to the file while a run lasts.

    Also when ``fit`` is called from Python with logging left unconfigured (the ``ctcovid`` logger
    then sits at WARNING and the file would stay empty); the logger's level is restored after.
    """

    def __init__(self, path: Path) -> None:
        self.logger = logging.getLogger("ctcovid")
        self.handler = file_handler(path)
        self.handler.setLevel(logging.INFO)
        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()
        self.logger.setLevel(self.level)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
