"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class DiffInjectError(Exception):
    """Base class for errors caused by bad input (paths, values, data)."""


class DataError(DiffInjectError):
    """A dataset folder, file or image is missing or malformed."""


class ConfigError(DiffInjectError):
    """A config value, preset or registry name is invalid."""


class TrainingError(DiffInjectError):
    """Training could not continue (for example a non-finite loss)."""


class NonFiniteLoss(TrainingError):
    """Raised by a method when a loss is NaN or infinite; the training loop adds the step."""


class CheckpointError(DiffInjectError):
    """A checkpoint file is unreadable or does not fit the requested architecture."""
