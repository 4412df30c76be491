"""TensorBoard curves (``train.tensorboard: true``): every scalar a run logs to ``metrics.jsonl``
(the training loss and each of its terms, the validation metrics, the learning rate, the seconds;
the test metrics at the end) also goes to TensorBoard event files in ``RUN/tensorboard/``.

Tags are the log line's keys joined by ``/`` (``train/loss``, ``train/supcon``,
``valid/overall/micro_f1``, ``valid/speaker/micro_f1``, ``lr``, ``test/overall/micro_f1``,
``per_label/joy/f1``); the x axis is the optimiser step (the line's ``step``; a classical fit,
which takes none, logs at 1). Needs the ``tensorboard`` package: ``pip install 'ramer[tensorboard]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ramer.errors import RamerError, is_number

FOLDER = "tensorboard"
NOT_SCALARS = ("epoch", "step", "final")  # the x axis and the line's kind, not curves


def require_tensorboard() -> None:
    """Raise a clear error when the optional ``tensorboard`` package is missing."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard writes through it)
    except ImportError:
        raise RamerError("train.tensorboard needs the tensorboard package: pip install 'ramer[tensorboard]'") from None


def scalars(line: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(tag, value)`` for every number in a log line, nested keys joined by ``/``."""
    for key, value in line.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, tag + "/")
        elif is_number(value) and (prefix or key not in NOT_SCALARS):
            yield tag, float(value)


class CurveWriter:
    """Writes log lines as scalars to ``RUN/tensorboard``. ``resume_step``: the first step a
    resumed run logs again; the events of that step and later, written before an interruption,
    are dropped (as ``metrics.jsonl`` drops their lines)."""

    def __init__(self, run: str | Path, resume_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run) / FOLDER), purge_step=resume_step)

    def write(self, line: dict, step: int) -> None:
        for tag, value in scalars(line):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
