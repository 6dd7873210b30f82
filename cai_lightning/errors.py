"""Errors a user can cause and fix. The CLI prints them as one message and exits with status 2, without
a traceback; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Base class: the message says what is wrong, where, and what to do.

    ``UserError.latest`` is the last one raised: jsonargparse re-raises an error raised while it builds the
    model or data module (a config that names their class) as a ValueError listing the messages, and the
    CLI uses this to report the user's error as such."""

    latest: "UserError | None" = None

    def __init__(self, *args) -> None:
        super().__init__(*args)
        UserError.latest = self


class DataError(UserError, ValueError):
    """Bad data or data settings; the message names the file, row and field."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work (contradictory values, a model or tokenizer that cannot be loaded)."""
