"""Streaming shards (``cxr_vlp.data.stream``): what ``prepare format=litdata`` writes, samples identical to the image
cache's, refusal of another split or a leaking subject, and a mid-epoch resume of the litdata training loader."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from cxr_vlp.data.sampling import TrainIndex, TrainPosition
from cxr_vlp.data.splits import SplitLeakageError
from cxr_vlp.data.stream import (
    MANIFEST,
    STUDIES_FILE,
    ShardFormatError,
    ShardSet,
    StudyStream,
    StudyStreamLoader,
    check_new_out,
)
from cxr_vlp.inference.payload import split_fingerprint
from tests.integration.hydra_helpers import compose_train, tiny_overrides

SIZE = 64


def prepare_shards(tiny_dataset: Path, root: Path, out: str, extra: list[str] = ()) -> dict:
    """``python -m cxr_vlp.prepare format=litdata`` on the tiny set (64 px cache) into ``out``."""
    from cxr_vlp.prepare import prepare

    cfg = compose_train(
        root / "prepare",
        [
            "data=csv",
            f"data.root={tiny_dataset.parent}",
            f"data.reader.csv_path={tiny_dataset}",
            f"cache.dir={root / 'cache'}",
            f"cache.size={SIZE}",
            "cache.workers=1",
            "cache.progress=false",
            "format=litdata",
            f"out={out}",
            *extra,
        ],
        config_name="prepare",
    )
    return prepare(cfg)


def datamodule(tiny_dataset: Path, run: Path, extra: list[str]):
    cfg = compose_train(run, [*tiny_overrides(tiny_dataset), *extra])
    return instantiate(cfg.data, tokenizer={"kind": "wordpiece", "vocab_size": 300})


@pytest.fixture(scope="module")
def shards(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("stream")
    summary = prepare_shards(tiny_dataset, root, str(root / "shards"))
    return root, summary


@pytest.fixture(scope="module")
def cached_dm(tiny_dataset: Path, shards, tmp_path_factory: pytest.TempPathFactory):
    """The same data read from the 64-px image cache (no stream)."""
    root, _ = shards
    dm = datamodule(tiny_dataset, tmp_path_factory.mktemp("cached"), [f"data.image_cache={root / 'cache'}"])
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def stream_dm(tiny_dataset: Path, shards, tmp_path_factory: pytest.TempPathFactory):
    root, _ = shards
    dm = datamodule(tiny_dataset, tmp_path_factory.mktemp("streamed"), [f"data.stream={root / 'shards'}"])
    dm.setup("fit")
    return dm


def test_manifest_counts_fingerprint_and_records(shards, cached_dm) -> None:
    root, summary = shards
    manifest = json.loads((root / "shards" / MANIFEST).read_text())
    cached_dm.save_split(root / "split_cached.json")
    assert manifest["split_fingerprint"] == split_fingerprint(root / "split_cached.json")
    assert summary["shards"]["split_fingerprint"] == manifest["split_fingerprint"]
    assert manifest["image_size"] == SIZE
    for name in ("train", "val", "test"):
        table = cached_dm.tables[name]
        counts = manifest["splits"][name]
        assert counts["studies"] == len(table) and counts["dropped"] == 0
        assert counts["images"] == sum(len(p) for p in table.image_paths)
        assert counts["subjects"] == len(set(table.subject_ids))
    shard_set = ShardSet(str(root / "shards"))
    from cxr_vlp.data.stream import SampleSpec, ShardStudyDataset, iter_records

    val = ShardStudyDataset(shard_set.split_dir("val"), SampleSpec(None, None, 1, False, 0))
    table = cached_dm.tables["val"]
    for k, record in enumerate(iter_records(val)):
        assert record.index == k and record.study_id == table.study_ids[k]
        assert record.subject_id == table.subject_ids[k] and record.views == table.view_names[k]
        assert (record.findings, record.impression) == (table.findings[k], table.impression[k])
        labels = torch.from_numpy(table.labels[k]).nan_to_num(-9)
        assert torch.equal(torch.from_numpy(record.labels).nan_to_num(-9), labels)
        assert record.images == [Path(p).read_bytes() for p in table.image_paths[k]]  # the cached JPEG bytes


def _same(a, b) -> None:
    assert (a.study_id, a.subject_id, a.index, a.texts) == (b.study_id, b.subject_id, b.index, b.texts)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels.nan_to_num(-9), b.labels.nan_to_num(-9))


@pytest.mark.parametrize("epoch", [0, 3])
def test_shard_samples_are_the_image_cache_samples(cached_dm, stream_dm, epoch: int) -> None:
    """Same multi-view choice, augmentation and text views per (study, epoch) from the shards as from the cache."""
    train_cached, train_stream = cached_dm.datasets["train"], stream_dm.datasets["train"]
    assert len(train_stream) == len(train_cached)
    for i in range(0, len(train_cached), 9):
        _same(train_stream[TrainIndex(epoch, i)], train_cached[TrainIndex(epoch, i)])
    for i in range(len(cached_dm.datasets["val"])):
        _same(stream_dm.datasets["val"][i], cached_dm.datasets["val"][i])
    assert train_cached[TrainIndex(epoch, 0)].images.shape[0] == 2  # two image views in training
    # the streaming dataset draws the same samples (litdata counts epochs from 1)
    stream = StudyStream(
        stream_dm.shards().split_dir("train"),
        stream_dm._sample_spec("train", stream_dm._transforms),
        shuffle=True,
        seed=0,
        drop_last=False,
    )
    stream.current_epoch = epoch + 1
    _same(stream[5], train_cached[TrainIndex(epoch, 5)])


def test_a_run_with_another_split_is_refused(tiny_dataset: Path, shards, tmp_path: Path) -> None:
    root, summary = shards
    dm = datamodule(tiny_dataset, tmp_path, [f"data.stream={root / 'shards'}", "data.split_seed=1"])
    with pytest.raises(ShardFormatError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(root / "shards" / MANIFEST) in message and summary["shards"]["split_fingerprint"] in message
    dm.save_split(tmp_path / "split.json")
    assert split_fingerprint(tmp_path / "split.json") in message


def test_a_subject_in_two_splits_shards_is_refused(shards, tmp_path: Path) -> None:
    root, _ = shards
    bad = tmp_path / "bad"
    shutil.copytree(root / "shards", bad)
    rows = [json.loads(line) for line in gzip.decompress((bad / STUDIES_FILE).read_bytes()).splitlines()]
    train_subject = next(r["subject_id"] for r in rows if r["split"] == "train")
    moved = next(r for r in rows if r["split"] == "val")
    moved["subject_id"] = train_subject
    (bad / STUDIES_FILE).write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    with pytest.raises(SplitLeakageError, match=rf"{STUDIES_FILE}.*{train_subject}"):
        ShardSet(str(bad))


def test_incomplete_or_occupied_folders_are_refused(shards, tmp_path: Path) -> None:
    root, _ = shards
    with pytest.raises(FileExistsError, match="not empty"):
        check_new_out(str(root / "shards"))
    (tmp_path / "partial").mkdir()
    with pytest.raises(ShardFormatError, match=rf"partial/{MANIFEST} not found"):
        ShardSet(str(tmp_path / "partial"))


def _epoch_batches(loader: StudyStreamLoader, stop: int | None = None) -> list[list[str]]:
    out = []
    for k, batch in enumerate(loader):
        if stop is not None and k == stop:
            break
        out.append(list(batch.study_ids))
    return out


def _loader(dm, workers: int, position: dict | None = None) -> StudyStreamLoader:
    from cxr_vlp.data.batch import Collator

    stream = StudyStream(
        dm.shards().split_dir("train"), dm._sample_spec("train", dm._transforms), shuffle=True, seed=0, drop_last=True
    )
    stream.set_topology(1, 0, 1)
    return StudyStreamLoader(
        stream,
        batch_size=8,
        num_workers=workers,
        collate_fn=Collator(dm.tokenizer, 32),
        position=(lambda: position) if position else None,
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_loader_resumes_at_the_next_untrained_batch(stream_dm, workers: int) -> None:
    full = [_epoch_batches(_loader(stream_dm, workers)) for _ in range(1)][0]
    ids = [s for b in full for s in b]
    assert len(ids) == len(set(ids)) >= len(stream_dm.datasets["train"]) - 8 * max(1, workers)
    # two epochs uninterrupted
    reference = _loader(stream_dm, workers)
    epochs = [_epoch_batches(reference), _epoch_batches(reference)]
    assert epochs[0] == full and epochs[1] != epochs[0]
    # killed after 3 batches of epoch 1 (0-based): the state comes from the training position
    position = TrainPosition(1, 3, False, 8).as_dict()
    state = _loader(stream_dm, workers, position).state_dict()
    assert state["litdata"]["num_samples_yielded"] == 24 and state["litdata"]["current_epoch"] == 2
    resumed = _loader(stream_dm, workers)
    resumed.load_state_dict(state)
    assert _epoch_batches(resumed) == epochs[1][3:]
    # an epoch-end checkpoint starts the next epoch
    after_epoch = _loader(stream_dm, workers)
    after_epoch.load_state_dict(TrainPosition(0, len(epochs[0]), True, 8).as_dict())
    assert _epoch_batches(after_epoch) == epochs[1]
    with pytest.raises(ValueError, match="batch_size=4"):
        _loader(stream_dm, workers).load_state_dict(TrainPosition(0, 1, False, 4).as_dict())
