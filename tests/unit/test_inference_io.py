"""Pieces of the exported-model format: path scrubbing for the card, the split fingerprint, zero-shot thresholds from a
run's metrics, galleries on disk, and the pickle detector."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from cxr_vlp.inference.card import scrub_paths
from cxr_vlp.inference.gallery import Gallery
from cxr_vlp.inference.hub_io import _is_pickle, exported_hparams
from cxr_vlp.inference.payload import held_out_metrics, split_fingerprint, zeroshot_thresholds


def test_scrub_paths_replaces_paths_and_keeps_names() -> None:
    node = {
        "root": "/data/mimic",
        "reader": {"_target_": "cxr_vlp.data.readers.mimic.read", "csv_path": "a/b.csv"},
        "name": "mimic_cxr",
        "transforms": {"image_size": 224},
        "list": ["~/x", "plain"],
        "image_cache": None,
    }
    out = scrub_paths(node)
    assert out["root"] == "<path>" and out["reader"]["csv_path"] == "<path>" and out["list"] == ["<path>", "plain"]
    assert out["reader"]["_target_"] == "cxr_vlp.data.readers.mimic.read" and out["name"] == "mimic_cxr"
    assert out["transforms"] == {"image_size": 224} and out["image_cache"] is None
    hp = exported_hparams({"data": node, "output_dir": "/runs/x", "model": {"embed_dim": 8}})
    assert hp["output_dir"] is None and hp["data"]["root"] == "<path>" and hp["model"] == {"embed_dim": 8}


def test_split_fingerprint_ignores_order_and_sees_a_moved_subject(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"train": ["1", "2"], "val": ["3"], "test": ["4"]}))
    b.write_text(json.dumps({"test": ["4"], "val": ["3"], "train": ["2", "1"]}, indent=3))
    c.write_text(json.dumps({"train": ["1"], "val": ["3", "2"], "test": ["4"]}))
    assert split_fingerprint(a) == split_fingerprint(b) != split_fingerprint(c)
    assert len(split_fingerprint(a)) == 64


def test_thresholds_and_test_metrics_from_a_run() -> None:
    metrics = {
        "eval/zeroshot/threshold/Cardiomegaly": 0.4,
        "eval/zeroshot/threshold/Edema": float("nan"),
        "test/zeroshot/threshold/Cardiomegaly": 0.9,
        "train/loss": 1.0,
        "test/i2t/R@1": 0.5,
    }
    assert zeroshot_thresholds(metrics) == {"Cardiomegaly": 0.4}
    assert zeroshot_thresholds({"test/zeroshot/threshold/Edema": 0.3}) == {"Edema": 0.3}
    assert zeroshot_thresholds({}) == {}
    assert set(held_out_metrics(metrics)) == {
        "eval/zeroshot/threshold/Cardiomegaly",
        "test/zeroshot/threshold/Cardiomegaly",
        "test/i2t/R@1",
    }


@pytest.mark.parametrize("logvar", [None, torch.randn(3, 1)])
def test_gallery_round_trip(tmp_path: Path, logvar) -> None:
    g = Gallery("image", ["a.png", "b.png", "c.png"], torch.randn(3, 4), logvar)
    back = Gallery.load(g.save(tmp_path / "g.safetensors"))
    assert back.ids == g.ids and back.modality == "image" and torch.equal(back.embeddings, g.embeddings)
    assert (back.logvar is None) == (logvar is None) and (logvar is None or torch.equal(back.logvar, logvar))


def test_gallery_refuses_other_files_and_bad_shapes(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"embeddings": torch.zeros(1, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a cxr_vlp gallery"):
        Gallery.load(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"\[2, D\]"):
        Gallery("text", ["a", "b"], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="modality"):
        Gallery("audio", ["a"], torch.zeros(1, 2))


def test_pickle_detector(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(pickle.dumps({"a": 1}))
    torch.save({"a": torch.zeros(1)}, tmp_path / "t")
    (tmp_path / "j").write_text("{}")
    assert _is_pickle(tmp_path / "p") and _is_pickle(tmp_path / "t") and not _is_pickle(tmp_path / "j")


def test_import_cxr_vlp_is_cheap_and_cxrmodel_is_lazy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cxr_vlp; heavy = 'torch' in sys.modules; from cxr_vlp import CXRModel; "
        "print(heavy, CXRModel.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["False", "cxr_vlp.inference.model"]


def test_report_length_texts_are_texts_not_file_names(tmp_path: Path) -> None:
    from cxr_vlp.inference.base import are_texts

    long_report = "Findings: " + "the lungs are clear without focal consolidation. " * 20  # > 255 characters
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    assert are_texts([long_report, "no effusion"])
    assert not are_texts([long_report, str(image)])
