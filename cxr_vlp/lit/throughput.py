"""Lightning's ThroughputMonitor for our runs (samples/s and, with ``flops_per_batch``, MFU in the logs): what a
"sample" is for our batches, and a monitor that never leaves the module's FLOP counter running after an error."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor

from cxr_vlp.data.batch import Batch


class StudyThroughputMonitor(ThroughputMonitor):
    """:class:`~lightning.pytorch.callbacks.ThroughputMonitor` that stops the module's FLOP count
    (:meth:`~cxr_vlp.lit.module.ContrastiveModule.stop_flop_count`) when the fit raises, so a failed first step
    does not leave the counting dispatch mode active in the process."""

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        stop = getattr(pl_module, "stop_flop_count", None)
        if callable(stop):
            stop()


def studies_in_batch(batch: Batch) -> int:
    """Samples of a batch = studies (each brings ``Vi`` images and ``Vt`` report views)."""
    return len(batch)
