"""Training from streaming shards: 2 gloo processes see disjoint studies (each once per epoch), an ``s3://`` location
on a local S3-compatible server (moto), and a real ``train`` run whose checkpoint holds litdata's loader state.

The shards are written by ``python -m cxr_vlp.prepare format=litdata out=...`` (its entry function, composed from the
real configs) and trained from by ``python -m cxr_vlp.train ... data.stream=...`` (the training entry function)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cxr_vlp.data.stream import SampleSpec, ShardSet, ShardStudyDataset, StudyStream, StudyStreamLoader
from tests.integration.hydra_helpers import train_tiny_checkpoint
from tests.unit.ddp_spawn import spawn_and_collect
from tests.unit.test_stream import prepare_shards

WORLD = 2
BATCH = 4


def _ids(samples) -> list[str]:
    return [s.study_id for s in samples]


def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One DDP rank: two epochs of the training shards through the litdata loader (2 data workers)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from cxr_vlp.data.transforms import TransformConfig, build_transforms
        from cxr_vlp.text.text_views import TextViewSampler

        shards = ShardSet(Path(out_dir).joinpath("root.txt").read_text())
        spec = SampleSpec(build_transforms(TransformConfig(image_size=32), train=True), TextViewSampler(), 2, True, 0)
        stream = StudyStream(shards.split_dir("train"), spec, shuffle=True, seed=0, drop_last=True)
        stream.set_topology(dist.get_world_size(), dist.get_rank(), 1)
        loader = StudyStreamLoader(stream, batch_size=BATCH, num_workers=2, collate_fn=_ids)
        epochs = [[list(b) for b in loader] for _ in range(2)]
        torch.save({"epochs": epochs, "len": len(loader)}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_see_disjoint_studies_once_per_epoch(tiny_dataset: Path, tmp_path: Path) -> None:
    summary = prepare_shards(tiny_dataset, tmp_path, str(tmp_path / "shards"))
    n_train = summary["shards"]["splits"]["train"]["studies"]
    out = tmp_path / "ranks"
    out.mkdir()
    (out / "root.txt").write_text(str(tmp_path / "shards"))
    results = spawn_and_collect(_rank_worker, WORLD, out)
    for epoch in range(2):
        per_rank = [[s for b in r["epochs"][epoch] for s in b] for r in results]
        assert len({len(r["epochs"][epoch]) for r in results}) == 1  # equal batch counts: no rank waits in a collective
        assert all(len(r["epochs"][epoch]) == r["len"] for r in results)
        assert all(len(ids) == len(set(ids)) for ids in per_rank)  # no study twice on a rank
        assert not set(per_rank[0]) & set(per_rank[1])  # disjoint across ranks
        union = set(per_rank[0]) | set(per_rank[1])
        # litdata drops at most a partial batch per data worker and rank to keep the ranks equal
        assert n_train - WORLD * 2 * BATCH <= len(union) <= n_train
    assert results[0]["epochs"][0] != results[0]["epochs"][1]  # reshuffled per epoch


def test_shards_on_a_local_s3_server(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", endpoint),
        ):
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="cxr")
        url = "s3://cxr/shards/tiny"
        summary = prepare_shards(tiny_dataset, tmp_path, url)
        keys = {o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="cxr")["Contents"]}
        assert {"shards/tiny/manifest.json", "shards/tiny/train/index.json", "shards/tiny/val/index.json"} <= keys
        local = prepare_shards(tiny_dataset, tmp_path / "local", str(tmp_path / "local" / "shards"))
        assert summary["shards"]["split_fingerprint"] == local["shards"]["split_fingerprint"]

        remote, here = ShardSet(url), ShardSet(str(tmp_path / "local" / "shards"))
        assert remote.table.study_ids == here.table.study_ids
        spec = SampleSpec(None, None, 1, False, 0)
        a = ShardStudyDataset(remote.split_dir("val"), spec, cache_dir=str(tmp_path / "litdata-cache"))
        b = ShardStudyDataset(here.split_dir("val"), spec)
        assert len(a) == len(b) and all(a.record(i).images == b.record(i).images for i in range(len(b)))
        from cxr_vlp.data.transforms import TransformConfig, build_transforms
        from cxr_vlp.text.text_views import TextViewSampler

        train_spec = SampleSpec(
            build_transforms(TransformConfig(image_size=32), train=True), TextViewSampler(), 2, True, 0
        )
        stream = StudyStream(
            remote.split_dir("train"),
            train_spec,
            shuffle=True,
            seed=0,
            drop_last=True,
            cache_dir=str(tmp_path / "litdata-cache-train"),
        )
        loader = StudyStreamLoader(stream, batch_size=BATCH, num_workers=0, collate_fn=_ids)
        ids = [s for batch in loader for s in batch]
        n_train = summary["shards"]["splits"]["train"]["studies"]
        assert len(ids) == len(set(ids)) and n_train - BATCH < len(ids) <= n_train
        with pytest.raises(FileExistsError, match="already holds shards"):
            prepare_shards(tiny_dataset, tmp_path / "again", url)
    finally:
        server.stop()


def _find(node, key: str):
    if isinstance(node, dict):
        if key in node:
            return node[key]
        return next((f for v in node.values() if (f := _find(v, key)) is not None), None)
    if isinstance(node, (list, tuple)):
        return next((f for v in node if (f := _find(v, key)) is not None), None)
    return None


def test_train_and_test_from_shards(tiny_dataset: Path, tmp_path: Path) -> None:
    prepare_shards(tiny_dataset, tmp_path, str(tmp_path / "shards"))
    ckpt = train_tiny_checkpoint(
        tiny_dataset,
        tmp_path / "run",
        "demo",
        extra=[f"data.stream={tmp_path / 'shards'}", "test=true", "evaluation.tasks=[]"],
    )
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    litdata_state = _find(state["loops"], "litdata")
    assert litdata_state is not None and litdata_state["num_samples_yielded"] == 2 * 8  # two steps of batch 8
    assert (tmp_path / "run" / "metrics.json").is_file()
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test/i2t/R@1" in metrics
