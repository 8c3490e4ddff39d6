"""The trainer exception family: every message names the file, key or option, and the fix."""


class TrainerError(Exception):
    """Base class of the trainer's domain errors."""


class ConfigError(TrainerError):
    """A config file, key or value is wrong (unknown key, bad type, impossible combination)."""


class DataError(TrainerError):
    """The flow store or its manifest cannot serve this run (missing videos, empty subset, bad sizes)."""


class WeightsError(TrainerError):
    """Initial weights are missing or do not fit the chosen backbone."""


class CheckpointError(TrainerError):
    """A checkpoint is missing, damaged, or belongs to a different run."""
