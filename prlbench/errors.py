"""Every error that the CLI shows as a one-line message (no traceback): each says what to do."""


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


class StoreError(PrlbenchError):
    """A run or experiment folder whose records cannot be read (damaged, or another schema)."""


class Interrupted(PrlbenchError):
    """Ctrl-C or SIGTERM stopped the work; the message says what was kept and how to go on.
    The CLI exits 130 for it, as for a plain KeyboardInterrupt."""


class UnknownNameError(PrlbenchError, KeyError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
