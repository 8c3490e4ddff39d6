"""The fusion exception family: every message names the file, stream or option and the fix."""


class FusionError(Exception):
    """Base class for fusion's domain errors; the CLI turns them into click.ClickException."""


class CoverageError(FusionError):
    """Streams disagree on videos, labels, classes or view counts, so fusing them would give wrong numbers."""


class InputError(FusionError):
    """A score file is missing, unreadable, mislabelled or does not fit the request."""


class PredictError(FusionError):
    """`fusion predict` cannot run: a model, its recorded flow settings or the fusion choice is missing or
    unusable (errors of one video are reported per video instead)."""
