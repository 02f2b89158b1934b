"""Study-level dataset with multi-view image sampling and multi-section text views.

Training (``train=True``) returns ``num_image_views`` images per study, preferring images from different
view groups (frontal + lateral); a single-image study gives two augmentations of the same image.
Evaluation returns one frontal image (the first frontal; the first image if none is frontal) and the
primary report section, as the retrieval protocol expects.

Unreadable images (missing, undecodable, or truncated: the JPEG end-of-image marker / PNG IEND chunk is checked
before decoding) are skipped, counted and logged with their path: the study falls back to another of its
images, and a study with no readable image is replaced by the next study that is not already in the batch, so
batch sizes stay equal under DDP and no study appears twice in a batch (a duplicate would be a false negative
for the contrastive loss). The DataLoader hands a whole batch of indices to :meth:`StudyDataset.__getitems__`,
which is where the batch is known.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from cxr_vlp.data.sampling import TrainIndex
from cxr_vlp.data.table import StudyTable, view_group
from cxr_vlp.data.transforms import load_grayscale
from cxr_vlp.text.text_views import TextViewSampler

log = logging.getLogger(__name__)


@dataclass
class StudySample:
    """One study as the dataset returns it (before collation)."""

    images: torch.Tensor  # [V_img, 1, H, W]
    texts: list[str]  # V_txt strings
    labels: torch.Tensor  # [14] float, NaN = unknown
    study_id: str
    subject_id: str
    index: int


def choose_image_indices(views: list[str], num_views: int, train: bool, rng: np.random.Generator) -> list[int]:
    """Which of a study's images to use.

    Eval: the first frontal image (else the first image), repeated ``num_views`` times.
    Train: up to ``num_views`` distinct images, the first two from different view groups when the study
    has both; repeats (to be augmented differently) when the study has fewer images.
    """
    groups = [view_group(v) for v in views]
    if not train:
        first = next((i for i, g in enumerate(groups) if g == "frontal"), 0)
        return [first] * num_views
    order = list(rng.permutation(len(views)))
    chosen = [order[0]]
    if num_views > 1:
        other_group = [i for i in order[1:] if groups[i] != groups[chosen[0]]]
        rest = [i for i in order[1:] if i not in other_group]
        chosen += (other_group + rest)[: num_views - 1]
    return [int(chosen[k % len(chosen)]) for k in range(num_views)]


class StudyDataset(Dataset):
    """Images + text views + labels for each study of a :class:`StudyTable`."""

    def __init__(
        self,
        table: StudyTable,
        transform: A.Compose,
        text_sampler: TextViewSampler,
        num_image_views: int = 1,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        if len(table) == 0:
            raise ValueError(f"{table.source}: no studies in this split")
        self.table = table
        self.transform = transform
        self.text_sampler = text_sampler
        self.num_image_views = num_image_views
        self.train = train
        self.seed = seed
        self.unreadable: set[str] = set()

    def __len__(self) -> int:
        return len(self.table)

    def _generator(self, index: int, epoch: int) -> np.random.Generator:
        """Evaluation: a fixed generator per index. Training: one per (study, epoch), which also reseeds the
        augmentation pipeline, so a study's views and text augmentation in an epoch do not depend on the worker
        that loads it, the number of workers or a restart (:class:`~cxr_vlp.data.sampling.EpochSampler` sends the
        epoch with the index)."""
        if not self.train:
            return np.random.default_rng([self.seed, index])
        rng = np.random.default_rng([self.seed, epoch, index])
        self.transform.set_random_seed(int(rng.integers(2**31)))
        return rng

    @staticmethod
    def _key(key: int | TrainIndex) -> tuple[int, int]:
        """(epoch, index) of a dataset key: a :class:`TrainIndex` or a plain index (epoch 0)."""
        return (int(key.epoch), int(key.index)) if isinstance(key, TrainIndex) else (0, int(key))

    def _load(self, path: str) -> np.ndarray | None:
        if path in self.unreadable:
            return None
        try:
            return load_grayscale(path)
        except OSError as err:
            self.unreadable.add(path)
            log.warning("skipping image (%d unreadable so far): %s", len(self.unreadable), err)
            return None

    def _images(self, index: int, rng: np.random.Generator) -> list[np.ndarray] | None:
        paths, views = self.table.image_paths[index], self.table.view_names[index]
        if not paths:  # every image of the study is listed in the image cache's failed.csv
            return None
        wanted = choose_image_indices(views, self.num_image_views, self.train, rng)
        out = []
        for i in wanted:
            # the wanted image, else any other image of the study, else a view already loaded
            candidates = [i] + [j for j in range(len(paths)) if j != i]
            image = next(
                (img for img in map(self._load, (paths[j] for j in candidates)) if img is not None),
                out[-1] if out else None,
            )
            if image is None:
                return None
            out.append(image)
        return out

    def __getitem__(self, key: int | TrainIndex) -> StudySample:
        epoch, index = self._key(key)
        sample = self._sample(index, taken=frozenset(), epoch=epoch)
        if sample is None:
            raise OSError(f"{self.table.source}: no readable image in any study")
        return sample

    def __getitems__(self, keys: list[int] | list[TrainIndex]) -> list[StudySample]:
        """One batch: a study without a readable image is replaced by one outside the batch (and outside the other
        replacements). Only when every other readable study is already in the batch is the study dropped, and the
        batch is one smaller."""
        pairs = [self._key(key) for key in keys]
        taken = {index for _, index in pairs}
        samples = []
        for epoch, index in pairs:
            sample = self._sample(index, taken, epoch=epoch)
            if sample is None:
                log.warning(
                    "study %s has no readable image and every other readable study is in this batch: "
                    "the batch is one study smaller",
                    self.table.study_ids[index],
                )
                continue
            taken.add(sample.index)
            samples.append(sample)
        if not samples:
            raise OSError(f"{self.table.source}: no readable image in any study of the batch or outside it")
        return samples

    def _sample(self, index: int, taken: set[int] | frozenset[int], epoch: int = 0) -> StudySample | None:
        """Study ``index``, else the next study (cyclically) not in ``taken`` that has a readable image."""
        rng = self._generator(index, epoch)
        images, source = None, index
        n = len(self)
        candidates = itertools.chain([index], (k % n for k in range(index + 1, index + n) if k % n not in taken))
        for source in candidates:
            images = self._images(source, rng)
            if images is not None:
                break
        if images is None:
            return None
        if source != index:
            log.warning(
                "study %s has no readable image; using study %s instead",
                self.table.study_ids[index],
                self.table.study_ids[source],
            )
        tensors = torch.stack([self.transform(image=img)["image"] for img in images])
        texts = self.text_sampler.sample(
            self.table.findings[source], self.table.impression[source], rng, train=self.train
        )
        return StudySample(
            images=tensors,
            texts=texts,
            labels=torch.from_numpy(self.table.labels[source]),
            study_id=self.table.study_ids[source],
            subject_id=self.table.subject_ids[source],
            index=source,
        )
