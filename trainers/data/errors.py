"""The one error type of reading a dataset (kept apart so decode processes import nothing heavy)."""
from trainers.errors import GanrayError


class DataError(GanrayError, RuntimeError):
    """A dataset that cannot be read; the message names the shard or manifest."""
