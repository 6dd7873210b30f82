"""Errors a user can cause and fix. The CLI prints them as one message and exits with status 2, without
a traceback; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Base class: the message says what is wrong, where, and what to do."""


class DataError(UserError, ValueError):
    """Bad data or data settings; the message names the file, row and field."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work (contradictory values, a model or tokenizer that cannot be loaded)."""
