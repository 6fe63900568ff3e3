"""The one error family the tool raises on bad input (part of the runtime layer: a submission
raises them too).

Every check on untrusted input (shards, checkpoints, artifacts, configs) raises a subclass of
`GolfError` whose message names the file (or tensor) and the problem. The command line prints
that message and exits non-zero, without a traceback.
"""


class GolfError(Exception):
    """Bad input or an impossible request; the message is meant for the user."""


class ShardError(GolfError):
    """A token shard is malformed (magic, version, size, ids)."""


class DataError(GolfError):
    """A corpus, dataset folder or tokenizer is missing or inconsistent."""


class CheckpointError(GolfError):
    """A checkpoint is unreadable or does not match the model it is loaded into."""


class ConfigError(GolfError):
    """A preset, recipe, budget or command-line value is invalid."""


class ArtifactError(GolfError):
    """An artifact (blob) is corrupt, truncated, foreign or inconsistent."""


class FileError(GolfError):
    """A file or folder cannot be read or written (permissions, a full disk, a missing folder)."""
