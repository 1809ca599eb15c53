"""Progress reporting for the CLI: tqdm bars on a TTY, a few plain lines otherwise (CI logs)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class progress:
    """tqdm progress bar on a TTY, a few plain log lines otherwise (CI logs stay readable)."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self._bar = total, desc, None
        self._last_pct = -1

    def __enter__(self) -> Callable[[int, int], None]:
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="scan")
        return self._tick

    def _tick(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
            return
        pct = int(100 * done / max(total, 1)) // 25 * 25
        if pct != self._last_pct:
            self._last_pct = pct
            print(f"{self.desc}: {done}/{total}", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def cache_progress() -> Callable[[int, int], None]:
    state = {"bar": None}

    def tick(done: int, total: int) -> None:
        if sys.stderr.isatty():
            from tqdm import tqdm

            if state["bar"] is None:
                state["bar"] = tqdm(total=total, desc="preprocess", unit="scan")
            bar = state["bar"]
            bar.n = done  # type: ignore[attr-defined]
            bar.refresh()  # type: ignore[attr-defined]
            if done >= total:
                bar.close()  # type: ignore[attr-defined]
        elif done == total or done % max(1, total // 4) == 0:
            print(f"preprocess: {done}/{total} scans cached", file=sys.stderr)

    return tick


def batch_progress(epochs: int) -> Callable[[int], Callable[[int, int, dict[str, float]], None]]:
    """A per-epoch progress bar (loss, samples/s, ETA) on a TTY; nothing per batch otherwise."""

    def for_epoch(epoch: int) -> Callable[[int, int, dict[str, float]], None]:
        bar: Any = None

        def tick(done: int, total: int, stats: dict[str, float]) -> None:
            nonlocal bar
            if not sys.stderr.isatty():
                return
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
            bar.n = done
            bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=True)
            if done >= total:
                bar.close()

        return tick

    return for_epoch
