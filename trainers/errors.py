"""The one base of every error a user can act on.

Each command of the CLI catches :class:`GanrayError` alone and prints its message with
``exit_code``: 2 for usage and spec errors (:class:`UsageError`), 1 for everything else.
Messages name the file, field or service at fault and never hold a secret.
"""


class GanrayError(Exception):
    """A failure the message explains; the CLI exits with ``exit_code``."""

    exit_code = 1


class UsageError(GanrayError):
    """A command line or a spec that cannot work as written."""

    exit_code = 2
