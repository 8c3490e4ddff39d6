"""The data_manifest exception family: every message names the file (and line) and the fix."""


class ManifestError(Exception):
    """Bad dataset layout, bad split file, bad manifest text or a bad request on a manifest."""


class UnknownVideoError(ManifestError, KeyError):
    """A video id that the manifest does not hold; also a KeyError so mapping-style code can catch it."""

    def __str__(self) -> str:
        # KeyError.__str__ would print the repr of the message, quotes and all.
        return str(self.args[0]) if self.args else ""
