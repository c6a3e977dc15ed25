"""Errors that the CLI shows as a one-line message (no traceback): each says what to do."""


class PrlbenchError(Exception):
    """Base class: the message names the file / row / option at fault and the fix."""


class DataError(PrlbenchError):
    """Bad input data: a wrong column count, a non-numeric value, a label out of range, ..."""


class CacheError(PrlbenchError):
    """A preprocessed cache that is missing, incomplete or does not match its manifest."""


class DownloadError(PrlbenchError):
    """A download or import that failed (HTTP error, checksum mismatch, unsafe archive)."""


class ManualDownloadRequired(DownloadError):
    """The data set has no public direct URL; the message says how to get it by hand."""


class ConfigError(PrlbenchError):
    """A bad option or configuration value."""


class TrainingError(PrlbenchError):
    """Training could not go on (NaN / infinite loss, ...)."""
