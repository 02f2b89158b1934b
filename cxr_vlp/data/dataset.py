"""Study-level dataset with multi-view image sampling and multi-section text views.

Training (``train=True``) returns ``num_image_views`` images per study, preferring images from different
view groups (frontal + lateral); a single-image study gives two augmentations of the same image.
Evaluation returns one frontal image (the first frontal; the first image if none is frontal) and the
primary report section, as the retrieval protocol expects.

Unreadable images are skipped, counted and logged: the study falls back to another of its images, and a
study with no readable image is replaced by the next study so batch sizes stay equal under DDP.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from cxr_vlp.data.table import StudyTable, view_group
from cxr_vlp.data.text_views import TextViewSampler
from cxr_vlp.data.transforms import load_grayscale

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
        self._rng: np.random.Generator | None = None
        self._rng_pid: int | None = None

    def __len__(self) -> int:
        return len(self.table)

    def _generator(self, index: int) -> np.random.Generator:
        """Evaluation: a fixed generator per index. Training: one stream per process, seeded from torch
        (Lightning's ``seed_everything(workers=True)`` gives every worker and epoch its own seed)."""
        if not self.train:
            return np.random.default_rng([self.seed, index])
        if self._rng is None or self._rng_pid != os.getpid():
            base = torch.initial_seed() % (2**63)
            self._rng = np.random.default_rng([self.seed, base])
            self._rng_pid = os.getpid()
            self.transform.set_random_seed(int(self._rng.integers(2**31)))
        return self._rng

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
        wanted = choose_image_indices(views, self.num_image_views, self.train, rng)
        out = []
        for i in wanted:
            # the wanted image, else any other image of the study, else a view already loaded
            candidates = [i] + [j for j in range(len(paths)) if j != i]
            image = next((img for img in map(self._load, (paths[j] for j in candidates)) if img is not None),
                         out[-1] if out else None)
            if image is None:
                return None
            out.append(image)
        return out

    def __getitem__(self, index: int) -> StudySample:
        rng = self._generator(index)
        images, source = None, index
        for attempt in range(len(self)):
            source = (index + attempt) % len(self)
            images = self._images(source, rng)
            if images is not None:
                break
        if images is None:
            raise OSError(f"{self.table.source}: no readable image in any study")
        if source != index:
            log.warning("study %s has no readable image; using study %s instead",
                        self.table.study_ids[index], self.table.study_ids[source])
        tensors = torch.stack([self.transform(image=img)["image"] for img in images])
        texts = self.text_sampler.sample(self.table.findings[source], self.table.impression[source], rng,
                                         train=self.train)
        return StudySample(
            images=tensors,
            texts=texts,
            labels=torch.from_numpy(self.table.labels[source]),
            study_id=self.table.study_ids[source],
            subject_id=self.table.subject_ids[source],
            index=source,
        )
