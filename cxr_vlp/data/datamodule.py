"""LightningDataModule over any study table: patient-safe splits, multi-view training, typed batches.

The module is dataset-agnostic: ``reader`` is a callable returning a :class:`StudyTable` (the generic
CSV reader, or a dataset-specific one), and the optional ``prepare`` callable runs once on rank 0 before
reading (the synthetic generator uses it to create the dataset when it is not cached yet).

Splits: the table's ``split`` column when it has one (``use_official_split``), else a seeded patient-level
split stratified on the labels. A partly filled column (e.g. CheXpert, whose ``valid.csv`` is the test set)
keeps the official assignment and splits the remaining subjects into train / val in the ratio of
``split_fractions``. ``keep_official`` (e.g. ``[test]``) keeps only those official splits and treats the
other rows as unassigned (CLIP-XRad: official MIMIC test set, validation carved out of the training patients).
Either way the final tables are re-checked for subjects in two splits.

Image cache: when ``image_cache`` names a folder written by ``python -m cxr_vlp.prepare``, images are read
from there (the smallest cached size that covers ``transforms.image_size``); raw images otherwise.

Streaming shards: with ``stream`` (``data.stream=<dir or s3://...>``, written by ``python -m cxr_vlp.prepare
format=litdata out=...``) the study table, images and texts come from the shards (:mod:`cxr_vlp.data.stream`):
the split is recomputed with this run's settings and must be the shards' (their manifest's fingerprint); training
streams through litdata, evaluation reads the shards in order.

Training order: :class:`~cxr_vlp.data.sampling.EpochSampler` (a permutation of ``seed + epoch``, this rank's share)
in a :class:`~cxr_vlp.data.sampling.ResumableLoader`; the position in it is part of every checkpoint, so a resumed
fit starts at the first batch the interrupted one had not trained on. Every loader draws its workers' base seed
from a generator of its own, never from the global torch RNG.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from cxr_vlp.data.batch import Collator
from cxr_vlp.data.dataset import StudyDataset
from cxr_vlp.data.sampling import EpochSampler, ResumableLoader, TrainPosition, loader_generator
from cxr_vlp.data.splits import DEFAULT_SPLIT_NAMES, PatientSplit, patient_split, split_from_column
from cxr_vlp.data.table import StudyTable
from cxr_vlp.data.tokenizer import build_tokenizer, tokenizer_from_json, tokenizer_to_json
from cxr_vlp.data.transforms import TransformConfig, build_transforms
from cxr_vlp.text.text_views import TextViewSampler

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _canonical_split(value: object) -> str | None:
    """``train`` / ``val`` / ``test`` for an official split value, None for a blank one (unknown names are left
    to :func:`split_from_column`, which names them in its error)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text in ("", "nan", "none"):
        return None
    return DEFAULT_SPLIT_NAMES.get(text, text)


class CXRDataModule(L.LightningDataModule):
    """Splits a study table by patient and serves train / val / test loaders of :class:`Batch`.

    The tokenizer belongs to the data: ``tokenizer`` is the text encoder's tokenizer node. A local
    WordPiece tokenizer is trained on the training split only, on rank 0, and broadcast to the other
    ranks (training is deterministic; this saves the other ranks the work); with ``tokenizer_cache`` (a folder) it is
    trained once per training split and settings and reused by every later run and sweep job. :meth:`use_tokenizer`
    hands the data module another one instead (a checkpoint's, or a report decoder's). Checkpoints store it once, in
    the ``cxr_vlp`` payload (:mod:`cxr_vlp.checkpoint`), and a resumed run tokenises with the checkpoint's.
    """

    def __init__(
        self,
        reader: Callable[[], StudyTable],
        prepare: Callable[[], Any] | None = None,
        name: str = "dataset",
        root: str | None = None,
        credentialed: bool = False,
        image_cache: str | None = None,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        use_official_split: bool = True,
        keep_official: list[str] | None = None,
        transforms: dict | TransformConfig | None = None,
        text_views: dict | None = None,
        num_image_views: int = 1,
        eval_text_section: str = "impression",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_length: int = 128,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        max_studies: dict[str, int] | None = None,
        tokenizer: dict | None = None,
        tokenizer_cache: str | None = None,
        stream: str | None = None,
        stream_options: dict | None = None,
    ) -> None:
        super().__init__()
        self.reader = reader
        self.prepare = prepare
        self.name = name
        self.root = root
        self.credentialed = bool(credentialed)
        self.image_cache = image_cache
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.use_official_split = use_official_split
        self.keep_official = None if keep_official is None else {_canonical_split(k) for k in keep_official}
        self.transform_cfg = (
            transforms if isinstance(transforms, TransformConfig) else TransformConfig(**dict(transforms or {}))
        )
        text_kwargs = dict(text_views or {})
        self.train_text = TextViewSampler(**text_kwargs)
        self.eval_text = TextViewSampler(**{**text_kwargs, "num_views": 1, "primary": eval_text_section})
        self.num_image_views = num_image_views
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_length = max_length
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.max_studies = dict(max_studies or {})
        self.tokenizer_cfg = dict(tokenizer or {})
        self.tokenizer_cache = tokenizer_cache
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.split: PatientSplit | None = None
        self.tables: dict[str, StudyTable] = {}
        self.datasets: dict[str, StudyDataset] = {}
        self._resume_position: TrainPosition | None = None  # from a checkpoint, for the next train loader
        self.stream = str(stream) if stream else None
        self.stream_options = dict(stream_options or {})
        self._shards = None  # the opened ShardSet of `stream`

    # ------------------------------------------------------------------ preparation and splitting
    def prepare_data(self) -> None:
        if self.prepare is not None and not self.stream:  # the shards replace the raw dataset
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        table = self.read_table()
        self.split = self.make_split(table)
        assigned = self.split.assign(table.subject_ids)
        for name in SPLITS:
            rows = np.flatnonzero(assigned == name)
            limit = self.max_studies.get(name)
            if limit is not None:
                rows = rows[: int(limit)]
            self.tables[name] = table.subset(rows)
        self._check_disjoint()
        if self.stream:
            self.shards().check_split(self.split)
        log.info("studies per split: %s", {k: len(v) for k, v in self.tables.items()})
        if self.tokenizer is None and self.tokenizer_cfg:
            self.tokenizer = self._build_tokenizer()
        transforms = {
            True: build_transforms(self.transform_cfg, train=True),
            False: build_transforms(self.transform_cfg, train=False),
        }
        if self.stream:
            self._stream_datasets(transforms)
            return
        for name, table_ in self.tables.items():
            if len(table_) == 0:
                continue
            train = name == "train"
            self.datasets[name] = StudyDataset(
                table_,
                transforms[train],
                self.train_text if train else self.eval_text,
                num_image_views=self.num_image_views if train else 1,
                train=train,
                seed=self.seed,
            )

    def read_table(self) -> StudyTable:
        """The reader's table, with image paths pointing into the image cache when one is present (the shards'
        table with ``stream``)."""
        if self.stream:
            if self.max_studies:
                raise ValueError(
                    f"data.max_studies={self.max_studies} cannot be combined with data.stream: the "
                    "shards hold every study of each split (write smaller shards instead)"
                )
            return self.shards().table
        table = self.reader()
        if self.image_cache:
            from cxr_vlp.data.cache import apply_cache

            table = apply_cache(table, self.image_cache, min_size=self.transform_cfg.image_size)
        return table

    def make_split(self, table: StudyTable) -> PatientSplit:
        """Official split (complete or partial, see the module docstring) or a seeded patient split."""
        labels = table.labels if table.has_labels else None
        if not (self.use_official_split and table.split is not None):
            return patient_split(table.subject_ids, labels, fractions=self.split_fractions, seed=self.split_seed)
        given = np.array([_canonical_split(s) is not None for s in table.split])
        if self.keep_official is not None:  # e.g. keep the official test set, re-split train + validate
            given &= np.array([_canonical_split(s) in self.keep_official for s in table.split])
        if given.all():
            return split_from_column(pd.DataFrame({"subject_id": table.subject_ids, "split": table.split}))
        official = split_from_column(
            pd.DataFrame(
                {
                    "subject_id": [table.subject_ids[i] for i in np.flatnonzero(given)],
                    "split": [table.split[i] for i in np.flatnonzero(given)],
                }
            )
        )
        rest = [i for i in np.flatnonzero(~given) if table.subject_ids[i] not in official]
        groups = {k: set(getattr(official, k)) for k in SPLITS}
        if rest:
            train_f, val_f = self.split_fractions[0], self.split_fractions[1]
            fractions = (train_f / (train_f + val_f), val_f / (train_f + val_f), 0.0)
            extra = patient_split(
                [table.subject_ids[i] for i in rest],
                None if labels is None else labels[rest],
                fractions=fractions,
                seed=self.split_seed,
            )
            groups["train"] |= extra.train
            groups["val"] |= extra.val
            log.info(
                "%s: %d subjects without an official split assigned to train / val (%d / %d)",
                self.name,
                len(extra.train) + len(extra.val),
                len(extra.train),
                len(extra.val),
            )
        return PatientSplit(**groups)

    def shards(self):
        """The :class:`~cxr_vlp.data.stream.ShardSet` of ``stream`` (opened once)."""
        if self._shards is None:
            from cxr_vlp.data.stream import ShardSet

            self._shards = ShardSet(self.stream, self.stream_options)
            self._shards.check_dataset(self.name)
            if self._shards.image_size < self.transform_cfg.image_size:
                log.warning(
                    "%s holds images at %d px (shorter side), less than data.transforms.image_size=%d: they "
                    "are upscaled",
                    self.stream,
                    self._shards.image_size,
                    self.transform_cfg.image_size,
                )
        return self._shards

    def _sample_spec(self, name: str, transforms: dict):
        from cxr_vlp.data.stream import SampleSpec

        train = name == "train"
        return SampleSpec(
            transforms[train],
            self.train_text if train else self.eval_text,
            self.num_image_views if train else 1,
            train,
            self.seed,
        )

    def _stream_datasets(self, transforms: dict) -> None:
        """Map-style datasets over each split's shards (evaluation, the evaluation suite); training streams."""
        from cxr_vlp.data.stream import ShardStudyDataset

        self._transforms = transforms
        for name in SPLITS:
            if self.shards().count(name) == 0:
                continue
            self.datasets[name] = ShardStudyDataset(
                self.shards().split_dir(name), self._sample_spec(name, transforms), self.stream_options
            )

    def _stream_train_loader(self, **kwargs: Any):
        """The litdata training loader: this rank's disjoint share of the training shards, shuffled per epoch,
        pointed at the restored position when a fit resumes (else at the fit loop's epoch)."""
        from cxr_vlp.data.stream import StudyStream, StudyStreamLoader

        trainer = getattr(self, "trainer", None)
        world, rank, nodes = (
            (int(trainer.world_size), int(trainer.global_rank), int(trainer.num_nodes))
            if trainer is not None
            else (1, 0, 1)
        )
        dataset = StudyStream(
            self.shards().split_dir("train"),
            self._sample_spec("train", self._transforms),
            shuffle=True,
            seed=self.seed,
            drop_last=True,
            storage_options=self.stream_options,
        )
        dataset.set_topology(world, rank, nodes)
        kwargs.pop("persistent_workers", None)  # litdata's epoch and resume state live in the iterator's workers
        loader = StudyStreamLoader(dataset, batch_size=self.batch_size, position=self._train_position, **kwargs)
        if self._resume_position is not None:
            loader.apply_position(self._resume_position)
            self._resume_position = None
        elif trainer is not None:
            loader.set_epoch(int(trainer.fit_loop.epoch_progress.current.processed))
        return loader

    def _check_disjoint(self) -> None:
        """Re-check on the final tables that no subject appears in two splits (belt and braces)."""
        PatientSplit(**{name: frozenset(self.tables[name].subject_ids) for name in SPLITS})

    def _build_tokenizer(self) -> PreTrainedTokenizerBase:
        cfg = dict(self.tokenizer_cfg)
        kind = cfg.pop("kind")
        if kind != "wordpiece":
            return build_tokenizer(kind, **cfg)
        trainer = getattr(self, "trainer", None)
        distributed = trainer is not None and trainer.world_size > 1
        data = None
        if not distributed or trainer.is_global_zero:
            data = tokenizer_to_json(
                build_tokenizer(kind, train_texts=self.tables["train"].texts(), cache_dir=self.tokenizer_cache, **cfg)
            )
        if distributed:
            data = trainer.strategy.broadcast(data, src=0)
        return tokenizer_from_json(data)

    def use_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Tokenise with ``tokenizer`` (a checkpoint's, or a report decoder's) instead of building one at setup."""
        self.tokenizer = tokenizer

    def state_dict(self) -> dict[str, Any]:
        """The training position (the tokenizer is in the checkpoint payload, not here)."""
        state: dict[str, Any] = {}
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.state.fn == "fit":
            state["train_position"] = self._train_position()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("tokenizer_json"):  # checkpoints before payload format 1 kept a copy here
            self.tokenizer = tokenizer_from_json(state_dict["tokenizer_json"])
        trainer = getattr(self, "trainer", None)
        fitting = trainer is None or trainer.state.fn == "fit"
        if state_dict.get("train_position") and fitting:
            self._resume_position = TrainPosition.from_dict(state_dict["train_position"])

    def train_texts(self) -> list[str]:
        """Report sections of the training split, e.g. to train a local tokenizer (never val/test)."""
        self.setup("fit")
        return self.tables["train"].texts()

    def save_split(self, path: str | Path) -> None:
        if self.split is None:
            raise RuntimeError("setup() has not run yet")
        self.split.to_json(path)

    # ------------------------------------------------------------------ loaders
    def _loader(self, name: str, train: bool) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError("CXRDataModule.tokenizer must be set before creating data loaders")
        if name not in self.datasets:
            raise RuntimeError(f"the {name} split is empty: check split_fractions / the dataset")
        kwargs: dict[str, Any] = dict(
            num_workers=self.num_workers,
            collate_fn=Collator(self.tokenizer, self.max_length),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            generator=loader_generator(self.seed),
        )
        if not train:
            return DataLoader(self.datasets[name], batch_size=self.eval_batch_size, shuffle=False, **kwargs)
        if self.stream:
            return self._stream_train_loader(**kwargs)
        return ResumableLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            sampler=self._train_sampler(),
            drop_last=True,
            position=self._train_position,
            **kwargs,
        )

    def eval_dataset(self, name: str, transform) -> StudyDataset:
        """The ``name`` split for evaluation with another image pipeline ``transform`` (a model's own
        preprocessing, albumentations-style): one frontal view, the evaluation text view, as :meth:`val_dataloader`."""
        table = self.tables.get(name)
        if table is None or len(table) == 0:
            raise ValueError(f"the {name!r} split is empty or the data module was not set up")
        if self.stream:
            from cxr_vlp.data.stream import SampleSpec, ShardStudyDataset

            return ShardStudyDataset(
                self.shards().split_dir(name),
                SampleSpec(transform, self.eval_text, 1, False, self.seed),
                self.stream_options,
            )
        return StudyDataset(table, transform, self.eval_text, num_image_views=1, train=False, seed=self.seed)

    def eval_loader(self, dataset: StudyDataset) -> DataLoader:
        """Batches of an :meth:`eval_dataset` in table order (texts tokenised when the data module has a
        tokenizer; models with their own tokenizer read ``Batch.texts``)."""
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=Collator(self.tokenizer, self.max_length),
            pin_memory=self.pin_memory,
            persistent_workers=False,
            generator=loader_generator(self.seed),
        )

    def _train_sampler(self) -> EpochSampler:
        """This rank's share of the training split, shuffled per epoch, pointed at the restored position when a fit
        resumes (else at the fit loop's epoch)."""
        trainer = getattr(self, "trainer", None)
        world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
        sampler = EpochSampler(self.datasets["train"], seed=self.seed, num_replicas=world, rank=rank)
        if self._resume_position is not None:
            self._resume_position.apply(sampler, self.batch_size)
            self._resume_position = None
        elif trainer is not None:
            sampler.set_epoch(int(trainer.fit_loop.epoch_progress.current.processed))
        return sampler

    def _train_position(self) -> dict[str, int]:
        """The fit's position in the training data (:class:`~cxr_vlp.data.sampling.TrainPosition`)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return TrainPosition(0, 0, False, self.batch_size).as_dict()
        taken = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        done = taken >= trainer.num_training_batches
        return TrainPosition(int(trainer.current_epoch), taken, bool(done), self.batch_size).as_dict()

    def train_dataloader(self) -> DataLoader:
        self.check_one_training_batch()
        return self._loader("train", train=True)

    def check_one_training_batch(self) -> None:
        """Refuse a training split smaller than one batch per process: with ``drop_last`` it would train zero steps
        and test the untrained weights."""
        trainer = getattr(self, "trainer", None)
        world = int(trainer.world_size) if trainer is not None else 1
        n_train = len(self.tables.get("train") or ())
        per_rank = -(-n_train // world)  # DistributedSampler pads every rank to ceil(n / world)
        if per_rank < self.batch_size:
            sizes = ", ".join(f"{k} {len(v)}" for k, v in self.tables.items())
            ranks = f" over {world} processes ({per_rank} each)" if world > 1 else ""
            raise ValueError(
                f"{self.name}: the training split has {n_train} studies{ranks}, fewer than one batch "
                f"(data.batch_size={self.batch_size}), so training would run zero steps (split sizes: {sizes}). "
                "Lower data.batch_size or use a larger dataset / data.max_studies."
            )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
