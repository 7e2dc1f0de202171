"""Errors a user can cause and fix: the CLI prints them as one line, without a traceback."""


class ClipsonicError(Exception):
    """A failure caused by input, files or the environment, explained in one line."""


class MediaError(ClipsonicError):
    """A media file cannot be read as asked (missing, corrupt, no audio, past its end)."""


class CheckpointError(ClipsonicError):
    """A checkpoint file is missing, unsafe, of the wrong kind or does not fit its model."""


class ConfigError(ClipsonicError):
    """A configuration is unknown or has fields that do not fit its class."""


class Interrupted(ClipsonicError):
    """SIGINT or SIGTERM arrived; what was done so far was saved first."""
