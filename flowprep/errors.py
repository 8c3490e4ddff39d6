"""The flowprep exception family: every message names the file or option and the fix."""


class FlowprepError(Exception):
    """Base class for flowprep's domain errors (bad input, bad options, damaged stores)."""


class VideoError(FlowprepError):
    """A video cannot be used: unreadable, corrupt, truncated, too short. Recorded as a failure, never fatal."""


class StoreError(FlowprepError):
    """A flow store is missing, damaged, incomplete or was made with other settings."""
