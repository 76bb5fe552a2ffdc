"""The one error type of reading a dataset (kept apart so decode processes import nothing heavy)."""


class DataError(RuntimeError):
    """A dataset that cannot be read; the message names the shard or manifest."""
