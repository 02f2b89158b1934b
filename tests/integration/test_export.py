"""``python -m cxr_vlp.export``: the folder, its round-trip check, the push path (network call replaced) and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_vlp.export import main
from cxr_vlp.inference import CXRModel
from tests.integration.hydra_helpers import run_cli, train_tiny_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ckpt(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("export_run"), "demo")


def test_export_writes_a_checked_folder(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'model'}"]) == 0
    out = capsys.readouterr().out
    assert "round trip: the folder embeds bit-identically" in out and "ClipHead" in out
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["format"] == "cxr_vlp" and config["kind"] == "contrastive" and len(config["files"]) == 2
    assert CXRModel.from_pretrained(tmp_path / "model").kind == "contrastive"


def test_export_push_to_hub_reaches_the_upload(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from huggingface_hub import HfApi

    uploaded: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(
        HfApi,
        "upload_folder",
        lambda self, *, repo_id, folder_path, **kw: (
            uploaded.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir()))) or "oid"
        ),
    )
    assert main([f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'model'}", "push_to_hub=someone/cxr-demo"]) == 0
    assert uploaded and uploaded[0][0] == "someone/cxr-demo" and "model.safetensors" in uploaded[0][1]
    assert "uploaded to https://huggingface.co/someone/cxr-demo" in capsys.readouterr().out
    assert "someone/cxr-demo" in (tmp_path / "model" / "README.md").read_text()


def test_export_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([f"ckpt_path={tmp_path / 'missing.ckpt'}", f"out_dir={tmp_path / 'm'}"]) == 1
    assert "missing.ckpt: no such checkpoint file" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="out_dir"):
        main([f"ckpt_path={tmp_path / 'missing.ckpt'}"])
    with pytest.raises(SystemExit, match="unknown key 'outdir'"):
        main(["ckpt_path=x", "outdir=y"])


def test_export_command_line(ckpt: Path, tmp_path: Path) -> None:
    res = run_cli(
        [f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'model'}"], cwd=tmp_path, module="cxr_vlp.export", timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "model" / "model.safetensors").is_file()
