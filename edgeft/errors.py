"""The error types the CLI turns into exit codes.

Only `cli.py` maps these to exit codes and one-line messages; library code raises them
and never calls `exit()`.
"""

from __future__ import annotations

from pathlib import Path


class EdgeftError(Exception):
    """Bad user input: a missing file, a malformed record, an unknown key. Exit code 2."""

    exit_code = 2

    def __init__(self, reason: str, *, file: str | Path | None = None, place: str | None = None):
        self.reason = reason
        self.file = str(file) if file is not None else None
        self.place = place
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [p for p in (self.file, self.place) if p]
        head = ": ".join(parts)
        text = f"{head}: {self.reason}" if head else self.reason
        return " ".join(text.split("\n"))


class ConfigError(EdgeftError):
    """A target profile or flag that cannot be used; carries every problem found at once."""

    def __init__(self, problems: list[tuple[str, str]], *, file: str | Path | None = None):
        self.problems = problems
        reason = "; ".join(f"{key}: {why}" if key else why for key, why in problems)
        super().__init__(reason, file=file)


class ModelSourceError(EdgeftError):
    """A model source that cannot be resolved or loaded."""


class UnsupportedArchitecture(EdgeftError):
    """A model whose architecture no converter handles."""


class ArtifactError(EdgeftError):
    """A built artifact that is missing, truncated or corrupt."""


class AdaptersUnsupported(EdgeftError):
    """Task adapters asked of a backend that has no run-time adapter format."""


class BackendUnavailable(EdgeftError):
    """A backend that cannot run on this machine; the reason says why in one line."""


class ParityError(Exception):
    """An exported model that no longer computes what its source computed. Exit code 1."""

    exit_code = 1


class BudgetExceeded(Exception):
    """A benchmark that missed its budget or regressed past tolerance. Exit code 1."""

    exit_code = 1
