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


class ParameterError(ClipsonicError):
    """One argument of a library call must change (or be given) for it to go on.

    The message is a template with an ``{option}`` slot: a library caller reads the parameter
    (``allow_unlabelled=True``), the CLI the flag that sets it (``--allow-unlabelled``)."""

    def __init__(self, template: str, parameter: str, value: object = True) -> None:
        """`value` None: the slot names the parameter alone (``prior`` / ``--prior``)."""
        self.template, self.parameter, self.value = template, parameter, value
        super().__init__(template.format(option=parameter if value is None else f"{parameter}={value!r}"))

    def for_cli(self) -> str:
        flag = "--" + self.parameter.replace("_", "-")
        return self.template.format(option=flag if self.value in (True, None) else f"{flag} {self.value}")
