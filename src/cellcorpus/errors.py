"""Typed errors: the library raises these, only the CLI turns them into messages and exit codes."""

from __future__ import annotations

__all__ = ["CellcorpusError", "ConfigError", "InputError", "UnitFailed", "VerifyError", "MissingExtraError"]


class CellcorpusError(Exception):
    """Base of every error the user is meant to read (one line + optional hint)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(CellcorpusError):
    """The YAML config is invalid: unknown key, wrong type, missing path."""

    exit_code = 2


class InputError(CellcorpusError):
    """An input file or table is unusable; the message names the file and the problem."""


class MissingExtraError(CellcorpusError):
    """An optional dependency is needed; the message names the pip extra."""


class VerifyError(CellcorpusError):
    """`cellcorpus verify` found at least one failed check."""


class UnitFailed(CellcorpusError):  # noqa: N818 - name fixed by the design (STYLE.md)
    """A work unit raised; carries the unit id and input path so the user knows where."""

    def __init__(self, unit_id: str, path: str, cause: BaseException) -> None:
        reason = cause.message if isinstance(cause, CellcorpusError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"unit {unit_id} ({path}) failed: {reason}", getattr(cause, "hint", None))
        self.unit_id = unit_id
        self.path = path
        self.cause = cause
        # A config-class problem found inside a unit (a column missing from one file) is still a config
        # error: the exit code is the cause's, so scripts see the same code wherever it was found.
        self.exit_code = cause.exit_code if isinstance(cause, CellcorpusError) else 1

    def __reduce__(self):  # keep picklable across process / Dask boundaries
        return (UnitFailed, (self.unit_id, self.path, self.cause))
