"""User-facing errors.

Every mistake a user can make (bad file, bad sequence, wrong checkpoint, bad option) raises a
subclass of :class:`GlmjaxError` whose message says what is wrong and what to do. The CLI prints
the message on one line and exits with status 2; library callers can catch the base class.
"""


class GlmjaxError(Exception):
    """Base class of all user-facing errors."""


class InputFileError(GlmjaxError):
    """An input file is missing, empty, unreadable or of the wrong format."""


class SequenceError(GlmjaxError):
    """A sequence contains characters that are not nucleotides."""


class StoreError(GlmjaxError):
    """An HDF5 file is not a valid store of the expected kind or schema."""


class CanaryError(GlmjaxError):
    """Canary generation or planting cannot satisfy the request."""


class CheckpointError(GlmjaxError):
    """A model checkpoint is missing, malformed, or does not match the architecture."""


class ConfigError(GlmjaxError):
    """An option or configuration value is invalid."""
