"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class RamerError(Exception):
    """A user-facing error: bad input, a bad flag, a missing or corrupt file."""


class LossNotFinite(RamerError):
    """Training stopped: the loss became NaN or infinite (``ramer tune`` counts such a trial as
    pruned, a bad setting, not as a failure)."""
