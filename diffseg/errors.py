"""Errors raised for bad user input, before any long computation starts."""


class DiffsegError(Exception):
    """Base class: the message names the file, key or value at fault."""


class ConfigError(DiffsegError):
    """Unknown key, wrong type or invalid value in a config or override."""


class DataError(DiffsegError):
    """Missing, unreadable or inconsistent dataset files."""
