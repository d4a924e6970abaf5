"""One exception family for everything a user can cause and fix.

The CLI turns any ``MedMambaError`` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedMambaError(Exception):
    """Base class: a problem the user can act on (bad input, missing file, ...)."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class DatasetError(MedMambaError):
    """The raw dataset folder or one of its files is unusable."""


class PlansError(MedMambaError):
    """A plans.json or fingerprint.json is missing, malformed or does not match."""


class CheckpointError(MedMambaError):
    """A checkpoint is missing, corrupt or belongs to another network/plan."""


class ConfigError(MedMambaError):
    """An option value is invalid (unknown configuration, network, fold...)."""
