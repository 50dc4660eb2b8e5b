"""TensorBoard event files of a run (``<run folder>/tensorboard/``): losses, learning rate and
validation metrics per epoch, beside ``log.jsonl``.

Written with the ``tensorboard`` package's own event writer (no ``torch.utils.tensorboard``, whose
writer imports TensorFlow when it is installed: seconds and hundreds of MB in every run, and
torchvision imported after TensorFlow crashes). The package's ``notf`` marker makes it use its
built-in file layer instead of TensorFlow's. View with ``tensorboard --logdir <run folder>``.
"""

from __future__ import annotations

import numbers
import sys
import time
import types
from pathlib import Path
from typing import Any

#: Epoch-record keys written as scalars: the losses, the learning rate, validation metrics, throughput.
SCALAR_PREFIXES = ("loss", "lr", "val_", "images_per_second", "step_seconds")


def _writer_class():
    if "tensorflow" not in sys.modules:  # use tensorboard's own file layer, not TensorFlow's
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    return EventFileWriter


class EpochScalars:
    """One event file per run; :meth:`write` adds an epoch's record (``log.jsonl``'s line) as scalars
    tagged ``train/<key>`` and ``validation/<metric>`` at step = epoch."""

    def __init__(self, run_dir: str | Path):
        self.directory = Path(run_dir) / "tensorboard"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._writer = _writer_class()(str(self.directory))

    @staticmethod
    def scalars(record: dict[str, Any]) -> dict[str, float]:
        """``{tag: value}`` of the numeric entries of an epoch record that :data:`SCALAR_PREFIXES` names."""
        chosen = {}
        for key, value in record.items():
            if not key.startswith(SCALAR_PREFIXES) or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            tag = f"validation/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            chosen[tag] = float(value)
        return chosen

    def write(self, record: dict[str, Any]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in self.scalars(record).items()]
        self._writer.add_event(
            event_pb2.Event(wall_time=time.time(), step=int(record["epoch"]), summary=summary_pb2.Summary(value=values))
        )
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
