"""Errors raised for bad user input, before any long computation starts."""


class DiffsegError(Exception):
    """Base class: the message names the file, key or value at fault."""


class ConfigError(DiffsegError):
    """Unknown key, wrong type or invalid value in a config or override."""


class DataError(DiffsegError):
    """Missing, unreadable or inconsistent dataset files."""


class StorageError(DiffsegError):
    """A file could not be written: the disk or quota is full, the file system is read-only, or
    permission is denied. The message names the path and the cause."""


class Diverged(DiffsegError):
    """Training diverged (a non-finite loss term, or one that exploded): a result of the run's
    settings, recorded in its summary, never retried (the same settings diverge again)."""

    def __init__(self, message: str, stage: str, epoch: int, key: str):
        super().__init__(message)
        self.stage, self.epoch, self.key = stage, epoch, key


class Interrupted(DiffsegError):
    """Stopped before its end (Ctrl-C, or SIGTERM: ``exit_code`` 143): what was saved stays; the
    message says how to continue. The commands exit 130 for it, as for a Ctrl-C."""
    exit_code = 130
