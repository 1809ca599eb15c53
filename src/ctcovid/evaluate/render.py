"""A tiny document model rendered to Markdown and to self-contained HTML (plots as base64 PNG).

Reports, sweep tables and comparisons build a list of blocks once and write both formats from
it, so the two never disagree.
"""

from __future__ import annotations

import base64
import csv
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Doc:
    """An ordered list of headings, paragraphs, tables and images."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(header), [[fmt(v) for v in r] for r in rows])))

    def image(self, path: str | Path, alt: str) -> None:
        self.blocks.append(("img", (Path(path), alt)))

    def markdown(self, base: Path) -> str:
        """Markdown; images are linked relative to ``base`` (the folder the file goes to)."""
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "table":
                header, rows = value
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                path, alt = value
                out += [f"![{alt}]({_relative(path, base)})", ""]
        return "\n".join(out)

    def html(self) -> str:
        """A standalone HTML page; images are embedded, so the file can be mailed or archived alone."""
        esc = html.escape
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        for kind, value in self.blocks:
            if kind == "h":
                parts.append(f"<h2>{esc(value)}</h2>")
            elif kind == "p":
                parts.append(f"<p>{_code(esc(value))}</p>")
            elif kind == "table":
                header, rows = value
                parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
                parts.append("</table>")
            elif kind == "img":
                path, alt = value
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt='{esc(alt)}' src='data:image/png;base64,{data}'>")
                parts.append(f"<figcaption>{esc(alt)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, md_path: Path, html_path: Path | None = None) -> None:
        md_path.write_text(self.markdown(md_path.parent))
        if html_path is not None:
            html_path.write_text(self.html())


_CSS = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}"
    "th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
    "figure{display:inline-block;margin:0.5em}img{max-width:100%}"
)


def _code(text: str) -> str:
    """Markdown `code` spans as <code> (after escaping, so nothing else becomes markup)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def fmt(v: Any, digits: int = 4) -> str:
    """A cell: floats rounded, ``None`` as an em dash (undefined, see the notes)."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def with_ci(value: float | None, ci: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.912 [0.870, 0.950]``: a value and its confidence interval when there is one."""
    if value is None:
        return "—"
    if not ci or ci.get("low") is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A plain CSV (full precision; empty cell for undefined values)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([["" if v is None else v for v in r] for r in rows])
    return path
