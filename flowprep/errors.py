"""The flowprep exception family: every message names the file or option and the fix.

The command line maps OptionError to a usage error (exit status 2, like click's own checks) and every other
FlowprepError to a plain error (exit status 1).
"""


class FlowprepError(Exception):
    """Base class for flowprep's domain errors (bad input, bad options, damaged stores)."""


class OptionError(FlowprepError):
    """A bad option or argument value (size, flow parameter, bound, device...): the caller's misuse."""


class VideoError(FlowprepError):
    """A video cannot be used: unreadable, corrupt, truncated, too short. Recorded as a failure, never fatal."""


class StoreError(FlowprepError):
    """A flow store is missing, damaged, incomplete, locked or was made with other settings."""


class ClusterError(FlowprepError):
    """The Dask cluster of `--scheduler` cannot be used: unreachable, lost, or its workers cannot run this
    extraction (flowprep missing or another version, the videos not at the same path, no GPU)."""


class LayoutError(FlowprepError):
    """Frame and flow folders another tool wrote do not follow the layout asked for as a whole (no videos, a
    video id twice, a flow tree without its sub-folders); one video's problems are a VideoError instead."""
