"""Exceptions meant for people (L0: stdlib only).

Every error the toolkit raises on bad input is a subclass of :class:`CtcovidError`, so the CLI
can turn it into a one-line message and exit code 2 instead of a traceback. Messages quote the
bad value (a path, a key, a label) and say what to do about it.
"""

from __future__ import annotations


class CtcovidError(Exception):
    """Base class of the toolkit's user-facing errors."""


class ScanReadError(CtcovidError, ValueError):
    """A scan could not be read: the message names the path, the reason and the fix."""

    def __init__(self, path: object, reason: str, hint: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        msg = f"cannot read scan '{self.path}': {reason}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class ConfigError(CtcovidError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class ManifestError(CtcovidError, ValueError):
    """A cohort manifest or label file is malformed (the message names file, row and column)."""


class MissingExtraError(CtcovidError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"'{module}' is not installed; install it with: pip install 'ctcovid[{extra}]'")
