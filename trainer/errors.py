"""The trainer exception family: every message names the file, key or option, and the fix."""


class TrainerError(Exception):
    """Base class of the trainer's domain errors."""


class ConfigError(TrainerError):
    """A config file, key or value is wrong (unknown key, bad type, impossible combination)."""


class DataError(TrainerError):
    """The flow store or its manifest cannot serve this run (missing videos, empty subset, bad sizes)."""

    def __init__(self, message: str = ""):
        # Raised in a DataLoader worker, it is made again in the main process from the worker's traceback
        # text ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...\n...DataError:
        # <message>"): keep the one line that says what is wrong.
        if isinstance(message, str) and message.startswith("Caught DataError") and "DataError: " in message:
            message = message.rstrip().rsplit("DataError: ", 1)[1]
        super().__init__(message)


class WeightsError(TrainerError):
    """Initial weights are missing or do not fit the chosen backbone."""


class CheckpointError(TrainerError):
    """A checkpoint is missing, damaged, or belongs to a different run."""
