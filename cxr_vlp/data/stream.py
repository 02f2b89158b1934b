"""Streaming shards: the image cache of every split as litdata optimized chunks, for multi-node training.

``python -m cxr_vlp.prepare format=litdata out=<dir or s3://bucket/prefix>`` (:func:`write_shards`) writes, under
``out``::

    train/ val/ test/        litdata optimized datasets (index.json + chunk-*.bin), one record per study
    studies.jsonl.gz         every study of the table (ids, sections, views, labels, official split, its split)
    split.json               the patient split the shards were cut from (PatientSplit.to_json)
    manifest.json            written last: format, dataset, split fingerprint, image size, counts per split

A record holds the study's cached JPEG bytes (shorter side ``cache.size``, the bytes the image cache holds), its
view names, both report sections, the 14 labels, the study and subject ids and ``index``, the study's row in its
split table (the row :class:`~cxr_vlp.data.dataset.StudyDataset` uses, so both draw the same per-(study, epoch)
random numbers). ``data.stream=<out>`` (:class:`ShardSet`, read by :class:`~cxr_vlp.data.datamodule.CXRDataModule`)
rebuilds the study table from ``studies.jsonl.gz`` (no raw dataset needed on the node), splits it with the run's
split settings and refuses the shards unless that split's fingerprint
(:func:`cxr_vlp.inference.payload.split_fingerprint`) is the manifest's. Training streams
:class:`StudyStream` through :class:`StudyStreamLoader` (litdata's chunk-aware shuffle, every rank a disjoint share);
evaluation reads the shards in order by random access (:class:`ShardStudyDataset`). docs/design.md §2.

litdata builds its obstore S3 client without ``allow_http``, so a plain-``http://`` S3-compatible endpoint
(MinIO, a local moto server) fails with "builder error / BadScheme"; :func:`allow_plain_http` opts in when the
configured endpoint is ``http://``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import gzip
import io
import json
import logging
import math
import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import Dataset

from cxr_vlp.data.dataset import StudySample, choose_image_indices
from cxr_vlp.data.sampling import TrainPosition
from cxr_vlp.data.splits import SPLIT_NAMES, PatientSplit
from cxr_vlp.data.table import StudyTable
from cxr_vlp.text.labels import CHEXPERT_LABELS, NUM_LABELS
from cxr_vlp.text.text_views import TextViewSampler

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLIT_FILE = "split.json"
STUDIES_FILE = "studies.jsonl.gz"


# litdata's writer processes only read files and serialise bytes, so fork is safe and saves the ~10 s a spawned
# worker spends importing torch
_START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else None


class ShardFormatError(ValueError):
    """A shard folder that cannot be used: incomplete, another format, or cut from another split."""


# ---------------------------------------------------------------------------------------------- locations
def is_url(location: str) -> bool:
    """True for an object-store location (``s3://``, ``gs://``, ``r2://``), false for a local folder."""
    return "://" in str(location)


def join(location: str, name: str) -> str:
    return f"{str(location).rstrip('/')}/{name}" if is_url(location) else str(Path(location) / name)


def allow_plain_http(storage_options: Mapping[str, Any] | None = None) -> bool:
    """Let litdata's obstore S3 client talk to a plain-``http://`` endpoint (``endpoint_url`` of the storage
    options, else ``AWS_ENDPOINT_URL``); returns whether it was needed. Worker processes forked afterwards
    inherit the setting."""
    endpoint = (storage_options or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if not str(endpoint).startswith("http://"):
        return False
    from litdata.streaming import downloader

    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"
    return True


class Location:
    """Small files at the root of a shard folder, local or in an object store (litdata's storage providers)."""

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = str(root)
        self.storage_options = dict(storage_options or {})

    def _provider(self):
        from litdata.streaming.fs_provider import _get_fs_provider

        return _get_fs_provider(self.root, self.storage_options)

    def exists(self, name: str) -> bool:
        if not is_url(self.root):
            return (Path(self.root) / name).exists()
        return bool(self._provider().exists(join(self.root, name)))

    def read(self, name: str) -> bytes:
        path = join(self.root, name)
        if not is_url(self.root):
            return Path(path).read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, name)
            try:
                self._provider().download_file(path, local)
            except Exception as err:  # botocore raises its own ClientError family
                raise FileNotFoundError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
            return Path(local).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        path = join(self.root, name)
        if not is_url(self.root):
            Path(self.root).mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            Path(tmp).write_bytes(data)
            os.replace(tmp, path)
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, name)
            Path(local).write_bytes(data)
            self._provider().upload_file(local, path)


# ---------------------------------------------------------------------------------------------- records
@dataclass
class StudyRecord:
    """One decoded shard record (the study's JPEG bytes are not decoded yet)."""

    index: int
    study_id: str
    subject_id: str
    images: list[bytes]
    views: list[str]
    findings: str | None
    impression: str | None
    labels: np.ndarray  # [14] float32, NaN = unknown


def encode_record(record: StudyRecord) -> dict[str, Any]:
    """The litdata item of a study: a fixed set of leaves (litdata infers one data format from the first item)."""
    meta = {
        "views": list(record.views),
        "findings": record.findings,
        "impression": record.impression,
        "sizes": [len(b) for b in record.images],
    }
    return {
        "index": int(record.index),
        "study_id": str(record.study_id),
        "subject_id": str(record.subject_id),
        "meta": json.dumps(meta),
        "labels": np.asarray(record.labels, dtype=np.float32).reshape(NUM_LABELS),
        "images": b"".join(record.images),
    }


def decode_record(item: Mapping[str, Any]) -> StudyRecord:
    meta = json.loads(item["meta"])
    blob, images, start = bytes(item["images"]), [], 0
    for size in meta["sizes"]:
        images.append(blob[start : start + int(size)])
        start += int(size)
    labels = item["labels"]
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return StudyRecord(
        index=int(item["index"]),
        study_id=str(item["study_id"]),
        subject_id=str(item["subject_id"]),
        images=images,
        views=list(meta["views"]),
        findings=meta["findings"],
        impression=meta["impression"],
        labels=labels.astype(np.float32, copy=False),
    )


def _shard_item(tasks: list[tuple], position: int) -> dict[str, Any]:
    """``optimize`` worker: read the cached JPEG files of study ``position`` of ``tasks`` into its record (the inputs
    are positions, not paths: litdata treats inputs holding file paths as files to move)."""
    index, study_id, subject_id, paths, views, findings, impression, labels = tasks[position]
    images = []
    for path in paths:
        with open(path, "rb") as f:
            images.append(f.read())
    return encode_record(
        StudyRecord(
            index,
            study_id,
            subject_id,
            images,
            list(views),
            findings,
            impression,
            np.array([np.nan if v is None else v for v in labels], dtype=np.float32),
        )
    )


# ---------------------------------------------------------------------------------------------- sampling
def _decode(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)


def sample_record(
    record: StudyRecord,
    epoch: int,
    *,
    transform: A.Compose,
    text_sampler: TextViewSampler,
    num_image_views: int,
    train: bool,
    seed: int,
    source: str = "shards",
) -> StudySample:
    """The :class:`StudySample` of a record, drawn as :class:`~cxr_vlp.data.dataset.StudyDataset` draws it for
    the same study row and epoch: one generator per (seed, epoch, row) in training, per (seed, row) in evaluation,
    which also reseeds the augmentation pipeline, then the image choice, the transforms and the text views."""
    if train:
        rng = np.random.default_rng([seed, epoch, record.index])
        transform.set_random_seed(int(rng.integers(2**31)))
    else:
        rng = np.random.default_rng([seed, record.index])
    if not record.images:
        raise OSError(f"{source}: study {record.study_id} has no image in the shards")
    wanted = choose_image_indices(record.views, num_image_views, train, rng)
    decoded: dict[int, np.ndarray | None] = {}
    images: list[np.ndarray] = []
    for i in wanted:
        for j in [i] + [k for k in range(len(record.images)) if k != i]:
            if j not in decoded:
                decoded[j] = _decode(record.images[j])
                if decoded[j] is None:
                    log.warning("%s: image %d of study %s cannot be decoded; using another", source, j, record.study_id)
            if decoded[j] is not None:
                images.append(decoded[j])
                break
        else:
            raise OSError(f"{source}: no image of study {record.study_id} can be decoded")
    tensors = torch.stack([transform(image=img)["image"] for img in images])
    texts = text_sampler.sample(record.findings, record.impression, rng, train=train)
    return StudySample(
        images=tensors,
        texts=texts,
        labels=torch.from_numpy(np.array(record.labels)),
        study_id=record.study_id,
        subject_id=record.subject_id,
        index=record.index,
    )


@dataclass
class SampleSpec:
    """How records become samples: the split's transforms, text views and image views."""

    transform: A.Compose
    text_sampler: TextViewSampler
    num_image_views: int
    train: bool
    seed: int

    def __call__(self, record: StudyRecord, epoch: int, source: str) -> StudySample:
        return sample_record(
            record,
            epoch,
            transform=self.transform,
            text_sampler=self.text_sampler,
            num_image_views=self.num_image_views,
            train=self.train,
            seed=self.seed,
            source=source,
        )


class StudyStream(StreamingDataset):
    """A split's shards as an iterable of :class:`StudySample`: litdata assigns chunks to ranks and workers and
    shuffles them per epoch; the sample of a study is drawn per (study, epoch) as in the map-style dataset.
    litdata counts epochs from 1 (:attr:`current_epoch`); the training epoch is one less."""

    def __init__(
        self,
        input_dir: str,
        spec: SampleSpec,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            input_dir,
            cache_dir=cache_dir,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            storage_options=dict(storage_options) if storage_options else None,
        )
        self.spec = spec
        self.location = input_dir

    def set_topology(self, world_size: int, global_rank: int, num_nodes: int) -> None:
        """The trainer's processes (litdata guesses the node count from CUDA devices, which is wrong on CPU)."""
        from litdata.utilities.env import _DistributedEnv

        self.distributed_env = _DistributedEnv(int(world_size), int(global_rank), max(1, int(num_nodes)))
        self.shuffler = None

    def __getitem__(self, index: Any) -> StudySample:
        record = decode_record(super().__getitem__(index))
        return self.spec(record, int(self.current_epoch) - 1, self.location)


class ShardStudyDataset(Dataset):
    """A split's shards in their written order (position ``i`` is the ``i``-th study of the split that has an
    image), map-style: evaluation loaders, the evaluation suite's random access, Lightning's DistributedSampler."""

    def __init__(
        self,
        input_dir: str,
        spec: SampleSpec,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.stream = StreamingDataset(
            input_dir,
            cache_dir=cache_dir,
            shuffle=False,
            storage_options=dict(storage_options) if storage_options else None,
        )
        self.spec = spec
        self.location = input_dir
        self._length = len(self.stream)

    def __len__(self) -> int:
        return self._length

    def record(self, i: int) -> StudyRecord:
        if not 0 <= int(i) < self._length:
            raise IndexError(f"{self.location}: index {i} outside the {self._length} studies of the shards")
        return decode_record(self.stream[int(i)])

    def __getitem__(self, key: Any) -> StudySample:
        epoch, i = (int(key.epoch), int(key.index)) if hasattr(key, "epoch") else (0, int(key))
        return self.spec(self.record(i), epoch, self.location)


class StudyStreamLoader(StreamingDataLoader):
    """The training loader over a :class:`StudyStream`; its state is the fit's :class:`TrainPosition` plus litdata's
    loader state for that position.

    litdata counts the samples its loader has yielded, which runs ahead of training (Lightning's fetcher and the
    workers prefetch), so the state is rebuilt from ``position`` (the batches the training loop has taken, from the
    trainer): ``batches_taken * batch_size`` samples of litdata epoch ``epoch + 1``, the next epoch once the epoch
    is done. :meth:`load_state_dict` and :meth:`apply_position` hand that to litdata, which replays its worker
    assignment and skips the consumed samples.
    """

    def __init__(
        self,
        dataset: StudyStream,
        *,
        batch_size: int,
        num_workers: int,
        position: Callable[[], dict[str, int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=True, **kwargs)
        self.position = position

    def _position(self) -> TrainPosition:
        if self.position is not None:
            return TrainPosition.from_dict(self.position())
        return TrainPosition(max(0, int(self.current_epoch) - 1), 0, False, int(self.batch_size))

    def litdata_state(self, position: TrainPosition) -> dict[str, Any]:
        """litdata's ``StreamingDataLoader.state_dict()`` at ``position``."""
        epoch = position.epoch + 1  # litdata's count of the position's epoch
        samples = 0 if position.epoch_done else position.batches_taken * int(self.batch_size)
        workers = max(1, int(self.num_workers))
        saved = self.dataset._state_dict
        self.dataset._state_dict = None
        try:
            dataset_state = dict(self.dataset.state_dict(samples, self.num_workers, int(self.batch_size)))
        finally:
            self.dataset._state_dict = saved
        dataset_state["current_epoch"] = epoch
        batches = samples // int(self.batch_size)
        return {
            "dataset": dataset_state,
            "current_epoch": epoch,
            "num_samples_yielded": samples,
            "latest_worker_idx": (batches - 1) % workers if batches else 0,
        }

    def state_dict(self) -> dict[str, Any]:
        position = self._position()
        return {**position.as_dict(), "litdata": self.litdata_state(position)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.apply_position(TrainPosition.from_dict(state_dict))

    def apply_position(self, position: TrainPosition) -> None:
        """Start the next ``iter()`` at the first batch not yet taken (idempotent)."""
        if position.batch_size and position.batch_size != int(self.batch_size):
            raise ValueError(
                f"the checkpoint's training loader had batch_size={position.batch_size}, this run has "
                f"data.batch_size={self.batch_size}: resuming needs the same batch size"
            )
        state = self.litdata_state(position)
        if state["num_samples_yielded"] == 0:
            # the epoch has not started: the next iter() opens litdata epoch `current_epoch + 1`
            self.current_epoch = state["current_epoch"] - (0 if position.epoch_done else 1)
            self.restore = False
            self.dataset.reset_state_dict()
            return
        super().load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` the training epoch ``epoch`` (a fresh loader in a later epoch)."""
        self.current_epoch = int(epoch)


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class ShardSummary:
    out: str
    dataset: str
    split_fingerprint: str
    image_size: int
    splits: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "dataset": self.dataset,
            "split_fingerprint": self.split_fingerprint,
            "image_size": self.image_size,
            "splits": self.splits,
        }


def fingerprint(split: PatientSplit) -> str:
    """The split fingerprint of :func:`cxr_vlp.inference.payload.split_fingerprint` (of this split's json)."""
    from cxr_vlp.inference.payload import split_fingerprint

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SPLIT_FILE
        split.to_json(path)
        return split_fingerprint(path)


def _label_list(row: np.ndarray) -> list[float | None]:
    return [None if math.isnan(float(v)) else float(v) for v in row]


def _studies_jsonl(table: StudyTable, assigned: np.ndarray, in_shards: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for i in range(len(table)):
            row = {
                "study_id": table.study_ids[i],
                "subject_id": table.subject_ids[i],
                "split": str(assigned[i]),
                "official_split": None if table.split is None else table.split[i],
                "findings": table.findings[i],
                "impression": table.impression[i],
                "views": list(table.view_names[i]),
                "labels": _label_list(table.labels[i]),
                "in_shards": bool(in_shards[i]),
            }
            gz.write((json.dumps(row) + "\n").encode())
    return buf.getvalue()


def check_new_out(out: str, storage_options: Mapping[str, Any] | None = None) -> Location:
    """``out`` as a :class:`Location` when nothing is there yet (shards never overwrite anything)."""
    allow_plain_http(storage_options)
    location = Location(out, storage_options)
    if not is_url(out) and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise FileExistsError(f"out={out} is not empty: shards are only written into a new or empty folder")
    if is_url(out) and any(location.exists(name) for name in (MANIFEST, STUDIES_FILE, "train/index.json")):
        raise FileExistsError(f"out={out} already holds shards: choose another prefix or delete them")
    return location


def write_shards(
    datamodule,
    out: str,
    cache_dir: str,
    size: int,
    chunk_bytes: str = "64MB",
    storage_options: Mapping[str, Any] | None = None,
    workers: int = 1,
) -> ShardSummary:
    """Write the shards of every split of ``datamodule``'s table from the image cache ``<cache_dir>/s<size>``
    (:func:`~cxr_vlp.data.cache.build_cache` must have run). Refuses an ``out`` that already holds anything.

    Images the cache does not hold (its ``failed.csv``) are left out of their study; a study left without an
    image is not in the shards (``dropped`` in the manifest) but stays in ``studies.jsonl.gz``, so the split can be
    recomputed from it. ``workers`` are litdata's writer processes per split.
    """
    from litdata import optimize

    from cxr_vlp.data.cache import apply_cache, load_cache_map

    location = check_new_out(out, storage_options)
    table = datamodule.reader()
    split = datamodule.make_split(table)
    assigned = split.assign(table.subject_ids)
    cached = apply_cache(table, cache_dir, min_size=int(size))
    held = set(load_cache_map(cache_dir, int(size)).values())
    keep_paths: list[list[str]] = []
    keep_views: list[list[str]] = []
    for paths, views in zip(cached.image_paths, cached.view_names):
        pairs = [(p, v) for p, v in zip(paths, views) if p in held]
        keep_paths.append([p for p, _ in pairs])
        keep_views.append([v for _, v in pairs])
    in_shards = np.array([bool(p) for p in keep_paths])
    out_table = StudyTable(
        study_ids=table.study_ids,
        subject_ids=table.subject_ids,
        image_paths=keep_paths,
        view_names=keep_views,
        findings=table.findings,
        impression=table.impression,
        labels=table.labels,
        split=table.split,
        source=table.source,
        has_labels=table.has_labels,
        label_sources=table.label_sources,
    )
    counts: dict[str, dict[str, int]] = {}
    for name in SPLIT_NAMES:
        rows = np.flatnonzero(assigned == name)
        tasks = [
            (
                k,
                out_table.study_ids[i],
                out_table.subject_ids[i],
                out_table.image_paths[i],
                out_table.view_names[i],
                out_table.findings[i],
                out_table.impression[i],
                _label_list(out_table.labels[i]),
            )
            for k, i in enumerate(rows)
            if in_shards[i]
        ]
        counts[name] = {
            "studies": len(tasks),
            "images": sum(len(t[3]) for t in tasks),
            "subjects": len({t[2] for t in tasks}),
            "dropped": int(len(rows) - len(tasks)),
        }
        if counts[name]["dropped"]:
            log.warning(
                "%s: %d %s studies have no cached image and are left out of the shards",
                datamodule.name,
                counts[name]["dropped"],
                name,
            )
        if not tasks:
            continue
        log.info(
            "%s: writing %d %s studies (%d images) into %s",
            datamodule.name,
            len(tasks),
            name,
            counts[name]["images"],
            join(out, name),
        )
        optimize(
            fn=functools.partial(_shard_item, tasks),
            inputs=list(range(len(tasks))),
            output_dir=join(out, name),
            chunk_bytes=chunk_bytes,
            num_workers=max(1, int(workers)),
            reorder_files=False,
            keep_data_ordered=True,
            storage_options=dict(storage_options or {}),
            verbose=False,
            start_method=_START_METHOD,
        )
    location.write(STUDIES_FILE, _studies_jsonl(table, assigned, in_shards))
    with tempfile.TemporaryDirectory() as tmp:
        split.to_json(Path(tmp) / SPLIT_FILE)
        location.write(SPLIT_FILE, (Path(tmp) / SPLIT_FILE).read_bytes())
    manifest = {
        "format": FORMAT_VERSION,
        "dataset": datamodule.name,
        "split_fingerprint": fingerprint(split),
        "image_size": int(size),
        "splits": counts,
        "has_labels": bool(table.has_labels),
        "label_sources": dict(table.label_sources),
        "has_official_split": table.split is not None,
        "source": table.source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    location.write(MANIFEST, json.dumps(manifest, indent=1).encode())
    return ShardSummary(
        out=str(out),
        dataset=datamodule.name,
        split_fingerprint=manifest["split_fingerprint"],
        image_size=int(size),
        splits=counts,
    )


# ---------------------------------------------------------------------------------------------- reading
class ShardSet:
    """An opened shard folder: its manifest, split and study table (``studies.jsonl.gz``).

    The table's image paths are ``shard:<split>/<position>/<k>`` placeholders (the images are in the chunks);
    studies without an image in the shards have none. :meth:`check_split` refuses a run whose split differs.
    """

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = str(root)
        self.storage_options = dict(storage_options or {})
        allow_plain_http(self.storage_options)
        self.location = Location(self.root, self.storage_options)
        self.manifest_path = join(self.root, MANIFEST)
        if not self.location.exists(MANIFEST):
            raise ShardFormatError(
                f"{self.manifest_path} not found: {self.root} is not a complete shard folder "
                "(python -m cxr_vlp.prepare format=litdata out=... writes the manifest last)"
            )
        try:
            self.manifest = json.loads(self.location.read(MANIFEST))
        except json.JSONDecodeError as err:
            raise ShardFormatError(f"{self.manifest_path}: not valid JSON ({err})") from err
        required = ("format", "dataset", "split_fingerprint", "image_size", "splits")
        missing = [k for k in required if k not in self.manifest]
        if missing:
            raise ShardFormatError(f"{self.manifest_path}: missing key(s) {missing}")
        if self.manifest["format"] != FORMAT_VERSION:
            raise ShardFormatError(
                f"{self.manifest_path}: shard format {self.manifest['format']}, this version reads "
                f"format {FORMAT_VERSION}: write the shards again"
            )
        self.split = self._read_split()
        self.table, self.assigned = self._read_table()

    def _read_split(self) -> PatientSplit:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / SPLIT_FILE
            path.write_bytes(self.location.read(SPLIT_FILE))
            try:
                return PatientSplit.from_json(path)
            except ValueError as err:
                raise type(err)(f"{join(self.root, SPLIT_FILE)}: {err}") from err

    def _read_table(self) -> tuple[StudyTable, np.ndarray]:
        source = join(self.root, STUDIES_FILE)
        rows = [json.loads(line) for line in gzip.decompress(self.location.read(STUDIES_FILE)).splitlines() if line]
        groups: dict[str, set[str]] = {name: set() for name in SPLIT_NAMES}
        positions = dict.fromkeys(SPLIT_NAMES, 0)
        paths: list[list[str]] = []
        for n, row in enumerate(rows, start=1):
            if row.get("split") not in groups:
                raise ShardFormatError(f"{source}: row {n}: split {row.get('split')!r} is none of {list(SPLIT_NAMES)}")
            groups[row["split"]].add(str(row["subject_id"]))
            if row.get("in_shards"):
                k = positions[row["split"]]
                positions[row["split"]] += 1
                paths.append([f"shard:{row['split']}/{k}/{j}" for j in range(len(row["views"]))])
            else:
                paths.append([])
        try:
            PatientSplit(**groups)  # a subject in two splits' shards
        except ValueError as err:
            raise type(err)(f"{source}: {err}") from err
        labels = np.array(
            [[np.nan if v is None else v for v in row["labels"]] for row in rows], dtype=np.float32
        ).reshape(len(rows), NUM_LABELS)
        has_official = bool(self.manifest.get("has_official_split"))
        table = StudyTable(
            study_ids=[str(r["study_id"]) for r in rows],
            subject_ids=[str(r["subject_id"]) for r in rows],
            image_paths=paths,
            view_names=[list(r["views"]) for r in rows],
            findings=[r["findings"] for r in rows],
            impression=[r["impression"] for r in rows],
            labels=labels,
            split=[r["official_split"] for r in rows] if has_official else None,
            source=source,
            has_labels=bool(self.manifest.get("has_labels", True)),
            label_sources={k: v for k, v in (self.manifest.get("label_sources") or {}).items() if k in CHEXPERT_LABELS},
        )
        return table, np.array([r["split"] for r in rows], dtype=str)

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    def split_dir(self, name: str) -> str:
        return join(self.root, name)

    def count(self, name: str) -> int:
        return int((self.manifest["splits"].get(name) or {}).get("studies", 0))

    def check_split(self, split: PatientSplit) -> None:
        """Refuse a run whose patient split is not the one the shards were cut from."""
        mine, theirs = fingerprint(split), str(self.manifest["split_fingerprint"])
        if mine != theirs:
            raise ShardFormatError(
                f"{self.manifest_path}: the shards were cut from the patient split {theirs}, this run's split is "
                f"{mine} (check data.split_seed / data.split_fractions / data.use_official_split / "
                "data.keep_official against the prepare run, or write the shards again)"
            )

    def check_dataset(self, name: str) -> None:
        if str(self.manifest["dataset"]) != str(name):
            raise ShardFormatError(
                f"{self.manifest_path}: the shards hold the dataset {self.manifest['dataset']!r}, "
                f"this run's data.name is {name!r}"
            )


def iter_records(dataset: ShardStudyDataset) -> Iterator[StudyRecord]:
    """Every record of a split's shards, in order (tests and tools)."""
    for i in range(len(dataset)):
        yield dataset.record(i)
