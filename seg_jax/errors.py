"""Errors that are the user's to fix, told apart from the program's own.

A `UserError` is a mistake in what the run was given: a config value, the data, a workdir (no
checkpoint, or one of another run). Its message names the value and the fix, so the command line
prints it as one line, `FATAL <message>`, and exits with status 2, without a traceback
(`--verbose` or SEG_JAX_DEBUG=1 shows it). Any other exception is a bug or an environment
failure and keeps its traceback.

Each subclass also derives from the built-in exception a caller would expect (ValueError,
FileNotFoundError, ...), so `except ValueError` around library calls keeps working.
"""

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A mistake in the run's inputs; the message alone tells what to change."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (an unknown name, a wrong shape, an out-of-range number)."""


class DataError(UserError, ValueError):
    """Input data that cannot be read or does not fit the config (names the file or example)."""


class MissingCheckpointError(UserError, FileNotFoundError):
    """A workdir without the checkpoint the mode needs (eval, predict, export)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the run was pointed at that is missing or holds nothing usable."""


class IncompatibleWorkdirError(UserError, ValueError):
    """A workdir written by another config or version than the one resuming it."""


class ResourceError(UserError, MemoryError):
    """The run does not fit the machine (memory); the message names what to make smaller."""
