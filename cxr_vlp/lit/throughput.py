"""Helpers for Lightning's ThroughputMonitor (samples/s in the logs): what a "sample" is for our batches."""

from __future__ import annotations

from cxr_vlp.data.batch import Batch


def studies_in_batch(batch: Batch) -> int:
    """Samples of a batch = studies (each brings ``Vi`` images and ``Vt`` report views)."""
    return len(batch)
