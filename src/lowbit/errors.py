"""Errors lowbit raises for bad input.

Every error a user can cause derives from :class:`LowbitError`; the CLI prints
those as one line and exits non-zero, while anything else is a bug and keeps
its traceback. The subclasses also derive from the builtin that fits, so
``except ValueError`` works for callers who do not know lowbit's types.
"""


class LowbitError(Exception):
    """Base class for errors caused by bad input (not by a bug in lowbit)."""


class ConfigError(LowbitError, ValueError):
    """An option, scheme, calibrator, bit width or layer pattern is invalid."""


class CalibrationError(LowbitError, ValueError):
    """Calibration data is missing, empty or not finite."""


class InputError(LowbitError, ValueError):
    """A tensor given to a quantized layer cannot be its input (shape, dtype, NaN values)."""


class CheckpointError(LowbitError, ValueError):
    """A checkpoint file is missing, truncated, corrupted or does not match."""


class DataError(LowbitError, FileNotFoundError):
    """A data set is missing or malformed."""


class TrainingError(LowbitError, RuntimeError):
    """Fine-tuning diverged (a non-finite or exploding loss) and was stopped."""
