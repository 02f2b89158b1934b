"""Report generation end to end: a contrastive checkpoint, +experiment=reportgen_demo on it,
python -m cxr_vlp.generate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cxr_vlp.checkpoint import load_module
from cxr_vlp.data.table import read_generic_csv
from cxr_vlp.generate import generate_reports
from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, run_cli, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained_ckpt(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of contrastive pretraining on the tiny dataset; its last checkpoint."""
    run_dir = tmp_path_factory.mktemp("pretrain")
    cfg = compose_train(
        run_dir, ["+experiment=demo", *tiny_overrides(tiny_dataset), "trainer.max_epochs=1", "test=false"]
    )
    train(cfg)
    return run_dir / "checkpoints" / "last.ckpt"


def _reportgen_overrides(tiny_dataset: Path, pretrained: Path, extra: list[str]) -> list[str]:
    return [
        "+experiment=reportgen_demo",
        *tiny_overrides(tiny_dataset),
        f"pretrained_ckpt={pretrained}",
        "trainer.max_epochs=1",
        "reportgen.generation.max_new_tokens=12",
        "reportgen.generation.num_beams=2",
        "reportgen.decoder.local_config.hidden_size=32",
        "reportgen.decoder.local_config.intermediate_size=64",
        "reportgen.decoder.local_config.num_hidden_layers=1",
        "reportgen.generation.examples=3",
        *extra,
    ]


@pytest.mark.parametrize("prompts", [True, False])
def test_reportgen_demo_trains_tests_and_reports(
    tiny_dataset: Path, pretrained_ckpt: Path, tmp_path: Path, prompts: bool
) -> None:
    cfg = compose_train(
        tmp_path,
        _reportgen_overrides(tiny_dataset, pretrained_ckpt, [f"reportgen.prompts.enabled={str(prompts).lower()}"]),
    )
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("bleu1", "bleu4", "rougeL", "clinical/micro_f1", "clinical/micro_precision", "clinical/micro_recall"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0, key
    assert metrics["test/bleu1"] >= metrics["test/bleu4"]
    assert ("test/oracle/clinical/micro_f1" in metrics) == prompts  # ground-truth prompts: only with prompts
    split = json.loads((tmp_path / "split.json").read_text())
    n_test = sum(s in set(split["test"]) for s in read_generic_csv(tiny_dataset).subject_ids)
    assert metrics["test/num_studies"] == n_test
    with (tmp_path / "reportgen" / "generations.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_test and len({r["study_id"] for r in rows}) == n_test
    assert all(r["prompt"].startswith("Findings: ") for r in rows) == prompts
    assert not any(r["prompt"] for r in rows) or prompts
    assert all("[PAD]" not in r["generated"] and "<report>" not in r["generated"] for r in rows)
    report = (tmp_path / "reportgen" / "report.md").read_text()
    assert "BLEU-4" in report and rows[0]["reference"].splitlines()[0][:40] in report
    # the image tower is frozen: the trained checkpoint carries the pretrained tower unchanged
    best = next((tmp_path / "checkpoints").glob("epoch*.ckpt"))
    module, payload = load_module(str(best))
    assert payload.kind == "reportgen" and payload.tokenizer_json
    contrastive, _ = load_module(str(pretrained_ckpt))
    for name, value in contrastive.encoder.image_encoder.state_dict().items():
        assert torch.equal(module.tower.image_encoder.state_dict()[name], value), name
    if prompts:  # thresholds were tuned on validation (Youden's J), not left at the initial 0.5 everywhere
        assert not torch.all(module.thresholds == 0.5)


def test_generate_cli_prints_a_report(tiny_dataset: Path, pretrained_ckpt: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, _reportgen_overrides(tiny_dataset, pretrained_ckpt, ["test=false"]))
    train(cfg)
    ckpt = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    image = read_generic_csv(tiny_dataset).image_paths[0][0]
    image = str(image if Path(image).is_absolute() else tiny_dataset.parent / image)
    ((prompt, report),) = generate_reports(str(ckpt), [image], num_beams=1)
    assert prompt.startswith("Findings: ") and prompt.endswith(".")
    result = run_cli(
        [f"ckpt_path={ckpt}", f"image={image}", "num_beams=1", f"hydra.run.dir={tmp_path / 'gen'}"],
        tmp_path,
        module="cxr_vlp.generate",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f"== {image}", prompt, report]
    with pytest.raises(FileNotFoundError, match="nope.png"):
        generate_reports(str(ckpt), [str(tmp_path / "nope.png")])


def test_reportgen_needs_a_contrastive_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, _reportgen_overrides(tiny_dataset, tmp_path / "missing.ckpt", []))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        train(cfg)
