"""Host-to-device transfer of our typed :class:`Batch`, shared by every LightningModule of the project."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from cxr_vlp.data.batch import Batch

# our transfer_batch_to_device is meant to win over the data module's (Lightning warns about it on every fit)
warnings.filterwarnings("ignore", message=r"You have overridden `transfer_batch_to_device` in `LightningModule`")


class BatchTransferMixin:
    """Put before ``L.LightningModule`` in the bases: moves only the tensor fields of a :class:`Batch` (the generic
    transfer walks and copies the string lists: about 2 ms per step on a GPU, measured by
    bench/framework_overhead.py); anything else goes through Lightning's transfer."""

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, Batch):
            return batch.to(device, non_blocking=device.type == "cuda")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)  # type: ignore[misc]
