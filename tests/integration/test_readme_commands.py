"""Every ``python -m cxr_vlp...`` command shown in README.md or a page of docs/ (fenced code blocks and inline code),
and ``make demo``'s recipe, is checked as written, with two fixed substitutions only:

* paths (:func:`substitute`): the value of every path-valued key (``data.root``, ``ckpt_path``, ``pretrained_ckpt``,
  ``image``, ``in_csv`` / ``out_csv`` / ``out_txt`` / ``out_dir``, a ``<placeholder>``) becomes a tiny test file or
  folder (a tiny generic CSV set, MIMIC-CXR-JPG / IU X-Ray / CheXpert trees from ``tests/layouts.py``, the
  checkpoint of an earlier command, a temporary output path), and ``paths.data_dir`` / the output directory point
  into the test's temporary folder;
* budget: :func:`budget` appends a fixed list per entry point (the tiny-model overrides of ``hydra_helpers``,
  one epoch of two batches, the synthetic generator at 48 patients (12 for ``num_patients=N``), a smaller evaluation
  bootstrap, short greedy report generations, two Optuna trials, one image-cache worker, and ``pretrained=false``
  for timm backbones, whose weights are not on the test machine).

:data:`CHECKS` maps each command, as the README writes it (comments dropped, whitespace collapsed), to how it is
checked: ``run`` executes it (in-process through the entry point's own function, or ``cli`` as a subprocess for
sweeps), ``compose`` composes it with Hydra's compose API, resolves every interpolation and instantiates what can be
built on this machine (the data module on a tiny tree, trainer / logger / launcher nodes, every job of a sweep) for
commands that need a GPU, a cluster, hub weights or too long a run, and ``elsewhere`` names the test file that runs
it (a tool with its own integration test). A shown command without an entry fails
:func:`test_every_readme_command_has_a_check`, naming it and the page that shows it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT
from tests.integration.hydra_helpers import compose_train, run_cli, tiny_model_overrides

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
MAKEFILE = REPO_ROOT / "Makefile"

# ---------------------------------------------------------------------------------------------------- extraction


def readme_commands(text: str | None = None) -> list[str]:
    """The README's commands: ``python -m cxr_vlp...`` lines of fenced code blocks (``\\`` continuations joined,
    ``# comments`` dropped), ``python -m cxr_vlp...`` inline code spans of the prose, and ``make demo``; each once."""
    text = README.read_text() if text is None else text
    found: list[str] = []
    fence = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.S | re.M)
    for block in fence.findall(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.split(r"\s+#\s", line.strip(), maxsplit=1)[0].strip()
            if line.startswith("python -m cxr_vlp") or line == "make demo":
                found.append(line)
    prose = fence.sub("", text)
    found += [m for m in re.findall(r"`(python -m cxr_vlp[^`]*)`", prose.replace("\n", " "))]
    normalised = [" ".join(c.split()) for c in found]
    return list(dict.fromkeys(normalised))


def documents() -> list[Path]:
    """README.md and every Markdown page under docs/, in a fixed order."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def shown_commands() -> dict[str, str]:
    """Every command of :func:`documents` -> the first page that shows it (relative to the repository)."""
    shown: dict[str, str] = {}
    for path in documents():
        for command in readme_commands(path.read_text()):
            shown.setdefault(command, str(path.relative_to(REPO_ROOT)))
    return shown


def make_demo_command() -> str:
    """The command of the Makefile's ``demo`` recipe, with ``$(PY)`` as ``python``."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", MAKEFILE.read_text(), flags=re.M)
    assert recipe, "Makefile has no demo recipe"
    lines = [ln.strip() for ln in recipe.group(1).splitlines() if "-m cxr_vlp" in ln]
    assert len(lines) == 1, lines
    return lines[0].replace("$(PY)", "python")


def split_command(command: str) -> tuple[str, list[str]]:
    """``python -m <module> args...`` -> (module, args); optional ``[key=value]`` groups are dropped and a
    ``<placeholder with spaces>`` is one argument."""
    command = re.sub(r"<[^>]*>", lambda m: m.group(0).replace(" ", "_"), command)
    tokens = shlex.split(re.sub(r"\s\[[^\]]*=[^\]]*\]", "", command))
    assert tokens[:2] == ["python", "-m"], command
    return tokens[2], tokens[3:]


# ---------------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """``run`` (in-process through the entry point's function), ``cli`` (a subprocess), ``compose``, or
    ``elsewhere`` with ``why`` the repository path of the test file that runs the command."""

    how: str
    why: str = ""


RUN, CLI = Check("run"), Check("cli")
CHECKS: dict[str, Check] = {
    "make demo": RUN,
    "python -m cxr_vlp.train +experiment=demo": RUN,
    "python -m cxr_vlp.train +experiment=mcsl_mimic data.root=/data/mimic-cxr-jpg/2.1.0": Check(
        "compose", "GPU experiment with Swin-T + Bio_ClinicalBERT hub weights"
    ),
    "python -m cxr_vlp.train +experiment=clip_iu_xray data.root=/data/iu_xray": Check(
        "compose", "GPU experiment with Swin-T + Bio_ClinicalBERT hub weights"
    ),
    "python -m cxr_vlp.train +experiment=clip_demo data=chexpert data.root=/data/CheXpert-v1.0-small": RUN,
    "python -m cxr_vlp.train +experiment=demo data=csv data.root=/data/mine": RUN,
    "python -m cxr_vlp.prepare data=mimic_cxr data.root=/data/mimic-cxr-jpg/2.1.0 cache.size=512 cache.workers=16": RUN,
    "python -m cxr_vlp.train +experiment=demo trainer.max_epochs=10 optim.lr=5e-4": Check(
        "compose", "a demo run with other values (the demo itself runs)"
    ),
    "python -m cxr_vlp.train +experiment=demo trainer.precision=bf16-mixed": Check(
        "compose", "a demo run at another precision (bf16 training is tested in tests/unit and tests/gpu)"
    ),
    "python -m cxr_vlp.train +experiment=demo trainer=ddp trainer.accelerator=cpu trainer.devices=2": Check(
        "compose", "2-process DDP from the command line runs in test_cli.py"
    ),
    "python -m cxr_vlp.train +experiment=demo ckpt_path=logs/demo/runs/<time>/checkpoints/last.ckpt": RUN,
    "python -m cxr_vlp.train +experiment=demo logger=wandb": Check(
        "compose", "W&B offline runs of a sweep are checked in test_sweeps.py"
    ),
    "python -m cxr_vlp.train debug=fdr": RUN,
    "python -m cxr_vlp.eval ckpt_path=logs/demo/runs/<time>/checkpoints/last.ckpt": RUN,
    "python -m cxr_vlp.eval ckpt_path=... evaluation.tasks=[retrieval,zeroshot]": Check(
        "compose", "the same entry point runs with every task above"
    ),
    "python -m cxr_vlp.eval ckpt_path=... data=mimic_cxr data.root=/data/mimic-cxr-jpg/2.1.0": Check(
        "compose", "the same entry point; the MIMIC data module is built and read"
    ),
    "python -m cxr_vlp.eval ckpt_path=... evaluation.probe.label_fractions=[0.01,0.1,1.0]": Check(
        "compose", "the same entry point runs with every task above"
    ),
    "python -m cxr_vlp.train -m +experiment=mcsl_demo loss.lam=0.0,0.3,0.7,1.0 loss.concept_temperature=0.1,1.0": Check(
        "compose", "8 jobs: every job composes (the Optuna sweep runs for real)"
    ),
    "python -m cxr_vlp.train -m +experiment=clip_demo model/image_encoder=resnet50,swin_tiny,vit_small": Check(
        "compose", "every job composes and its backbone runs a forward pass at the data's image size"
    ),
    "python -m cxr_vlp.train -m +experiment=mcsl_demo hparams_search=mcsl_optuna": CLI,
    "python -m cxr_vlp.train -m hydra/launcher=slurm trainer=slurm_ddp +experiment=mcsl_mimic data.root=... "
    "hydra.launcher.partition=gpu hydra.launcher.nodes=2 hydra.launcher.gpus_per_node=4": Check(
        "compose", "needs a SLURM cluster"
    ),
    "python -m cxr_vlp.train +experiment=reportgen_demo "
    "pretrained_ckpt=logs/demo/runs/<time>/checkpoints/<best>.ckpt": RUN,
    "python -m cxr_vlp.train +experiment=reportgen_demo pretrained_ckpt=... reportgen.prompts.enabled=false": Check(
        "compose", "the ablation of the report-generation run above"
    ),
    "python -m cxr_vlp.generate ckpt_path=logs/reportgen_demo/runs/<time>/checkpoints/<best>.ckpt image=cxr.jpg": RUN,
    "python -m cxr_vlp.train +experiment=reportgen_mimic data.root=/data/mimic-cxr-jpg "
    "pretrained_ckpt=<mcsl_mimic .ckpt>": Check("compose", "GPU experiment on a paper-size checkpoint"),
    "python -m cxr_vlp.data.synthetic out_dir=DIR num_patients=N seed=S": RUN,
    "python -m cxr_vlp.data.summary data=mimic_cxr data.root=...": RUN,
    "python -m cxr_vlp.experiments.collect <multirun dir> x=loss.lam hue=loss.concept_temperature "
    "metrics=test/i2t/R@10,eval/i2t/P@5": RUN,
    "python -m cxr_vlp.text.label_reports in_csv=reports.csv out_csv=labelled.csv "
    "[text_columns=findings,impression]": RUN,
    "python -m cxr_vlp.concepts.mine in_csv=train.csv out_txt=concepts.txt [min_count=20]": RUN,
    "python -m cxr_vlp.export ckpt_path=logs/demo/runs/<time>/checkpoints/last.ckpt out_dir=cxr_model "
    "[push_to_hub=<user>/<name>]": RUN,
    # other people's models (docs/models.md): hub weights are not here; the data side composes and is read, and the
    # same entry point evaluates tiny open_clip / transformers models in tests/integration/test_adapters_eval.py
    "python -m cxr_vlp.eval model=hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 data=chexpert "
    "data.root=/data/CheXpert-v1.0-small": Check("compose", "BiomedCLIP hub weights"),
    "python -m cxr_vlp.eval model_source=biomedclip data=chexpert data.root=/data/CheXpert-v1.0-small": Check(
        "compose", "BiomedCLIP hub weights"
    ),
    "python -m cxr_vlp.eval model=/models/chexzero/best_64_5e-05_original_22000_0.864.pt data=chexpert "
    "data.root=/data/CheXpert-v1.0-small": Check("compose", "CheXzero weights"),
    "python -m cxr_vlp.eval model=/models/chexzero/best_64_5e-05_original_22000_0.864.pt model_source.arch=ViT-B-32 "
    "data=rsna data.root=/data/rsna-pneumonia-detection-challenge": Check(
        "elsewhere", "tests/integration/test_adapters_eval.py"
    ),
    "python -m cxr_vlp.eval model=/models/my_open_clip_folder data=mimic_cxr "
    "data.root=/data/mimic-cxr-jpg/2.1.0": Check("compose", "an open_clip folder of the user's"),
    "python -m cxr_vlp.eval model=openai/clip-vit-base-patch32 data=iu_xray data.root=/data/iu_xray": Check(
        "compose", "hub weights"
    ),
    "python -m cxr_vlp.eval model=<spec> data=<name> data.root=...": Check(
        "elsewhere", "tests/integration/test_adapters_eval.py"
    ),
    # the benchmark harness (docs/benchmark.md): its entry point on tiny checkpoints and a tiny open_clip folder
    "python -m cxr_vlp.benchmark": Check("elsewhere", "tests/integration/test_benchmark.py"),
    "python -m cxr_vlp.benchmark models=[<a.ckpt>,<b>] benchmark=[chexpert5,retrieval]": Check(
        "elsewhere", "tests/integration/test_benchmark.py"
    ),
    "python -m cxr_vlp.benchmark data=synthetic models=[logs/clip_demo/runs/<time>/checkpoints/last.ckpt,"
    "logs/mcsl_demo/runs/<time>/checkpoints/last.ckpt,<open_clip folder>] "
    "benchmark=[chexpert5,chexpert5x200,mimic5x200,retrieval] benchmark.chexpert5x200.pool=test "
    "benchmark.mimic5x200.pool=test": Check("elsewhere", "tests/integration/test_benchmark.py"),
    "python -m cxr_vlp.benchmark data=chexpert data.root=/data/CheXpert-v1.0-small models=[<a.ckpt>,<b.ckpt>] "
    "benchmark=[chexpert5,chexpert5x200]": Check("elsewhere", "tests/integration/test_benchmark.py"),
    "python -m cxr_vlp.benchmark data=mimic_cxr data.root=/data/mimic-cxr-jpg/2.1.0 models=[<a.ckpt>,<b.ckpt>] "
    "benchmark=[chexpert5,mimic5x200,retrieval]": Check("elsewhere", "tests/integration/test_benchmark.py"),
    "python -m cxr_vlp.benchmark data=rsna data.root=/data/rsna-pneumonia models=[<a.ckpt>,<b.ckpt>] "
    "benchmark=[rsna]": Check("elsewhere", "tests/integration/test_benchmark.py"),
    # streaming shards (docs/streaming.md): written and trained from on the tiny set, on a directory and on a local S3
    # server, in tests/integration/test_stream.py
    "python -m cxr_vlp.prepare format=litdata out=/shards/synthetic": Check(
        "elsewhere", "tests/integration/test_stream.py"
    ),
    "python -m cxr_vlp.prepare data=mimic_cxr data.root=/data/mimic-cxr-jpg/2.1.0 cache.size=512 cache.workers=16 "
    "format=litdata out=s3://my-bucket/mimic-s512": Check("elsewhere", "tests/integration/test_stream.py"),
    "python -m cxr_vlp.train +experiment=demo data.stream=/shards/synthetic": Check(
        "elsewhere", "tests/integration/test_stream.py"
    ),
    "python -m cxr_vlp.train +experiment=clip_mimic data.stream=s3://my-bucket/mimic-s512 trainer=ddp "
    "trainer.devices=8 trainer.num_nodes=4": Check("elsewhere", "tests/integration/test_stream.py"),
    # W&B dashboards (docs/wandb.md): offline runs read back in tests/integration/test_wandb_dashboards.py, the
    # workspace object checked in tests/unit/test_wandb_tracking.py
    "python -m cxr_vlp.train +experiment=demo logger=wandb logger.wandb.log_model=best": Check(
        "compose", "offline W&B runs with model artifacts are read back in test_wandb_dashboards.py"
    ),
    "python -m cxr_vlp.wandb_workspace project=cxr_vlp": Check("elsewhere", "tests/unit/test_wandb_tracking.py"),
    "python -m cxr_vlp.wandb_workspace project=cxr_vlp group=mcsl_demo-<sweep folder> "
    "sweep_dir=logs/mcsl_demo/multiruns/<sweep folder>": Check("elsewhere", "tests/unit/test_wandb_tracking.py"),
    "python -m cxr_vlp.wandb_workspace project=cxr_vlp swept=loss.lam,loss.concept_temperature save=false": Check(
        "elsewhere", "tests/unit/test_wandb_tracking.py"
    ),
    "python -m cxr_vlp.experiments.collect": Check("elsewhere", "tests/unit/test_collect.py"),
    # the explorer (docs/explorer.md): served and driven in headless Chromium, exported, in tests/browser
    "python -m cxr_vlp.explore": Check("elsewhere", "tests/browser/test_explorer_page.py"),
    "python -m cxr_vlp.explore ckpt_path=logs/demo/runs/<time>/checkpoints/last.ckpt": Check(
        "elsewhere", "tests/browser/test_explorer_page.py"
    ),
    "python -m cxr_vlp.explore ckpt_path=cxr_model data=mimic_cxr data.root=/data/mimic-cxr-jpg/2.1.0 split=test "
    "port=8800": Check("elsewhere", "tests/browser/test_explorer_page.py"),
    "python -m cxr_vlp.explore ckpt_path=logs/demo/runs/<time>/checkpoints/last.ckpt export=explorer_page": Check(
        "elsewhere", "tests/browser/test_explorer_page.py"
    ),
    "python -m cxr_vlp.export": Check("elsewhere", "tests/integration/test_export.py"),
    # the labeler on real reports (docs/labeler.md): its CLI prints the table in tests/unit/test_labeler_openi.py
    "python -m cxr_vlp.text.labeler_eval": Check("elsewhere", "tests/unit/test_labeler_openi.py"),
    "python -m cxr_vlp.text.labeler_eval labeler_file=/tmp/labeler_before.py errors=true": Check(
        "elsewhere", "tests/unit/test_labeler_openi.py"
    ),
    "python -m cxr_vlp.text.label_reports": Check("elsewhere", "tests/unit/test_labeler_options.py"),
}


def budget(module: str, args: list[str] = ()) -> list[str]:
    """The fixed budget overrides appended to a command of ``module`` with arguments ``args`` (besides the path
    substitutions). A config group the command selects itself (``model/image_encoder=...``) is left to it."""
    if module == "cxr_vlp.train":
        extra = [o for o in tiny_model_overrides() if not o.startswith("trainer.devices=")] + [
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.num_sanity_val_steps=0",
            "model.image_encoder.pretrained=false",
        ]
        if any(a.startswith("+experiment=reportgen") for a in args):  # short generations
            extra += [
                "reportgen.generation.num_beams=1",
                "reportgen.generation.max_new_tokens=16",
                "reportgen.generation.min_new_tokens=1",
                "reportgen.generation.val_batches=1",
            ]
        if any(a.startswith("debug=") for a in args):  # debug configs have no callbacks
            extra = [o for o in extra if not o.startswith("callbacks.")]
        if any(a.startswith("hparams_search=") for a in args):
            extra.append("hydra.sweeper.n_trials=2")  # two jobs: the collect command needs a swept key
    elif module == "cxr_vlp.eval":
        extra = [
            "evaluation.figures=false",
            "evaluation.bootstrap.n_resamples=20",
            "evaluation.probe.max_epochs=3",
            "evaluation.device=cpu",
        ]
    elif module == "cxr_vlp.generate":
        extra = ["num_beams=1", "max_new_tokens=16"]
    elif module == "cxr_vlp.prepare":
        extra = ["cache.workers=1", "cache.progress=false"]
    else:
        extra = []
    groups = {a.split("=", 1)[0] for a in args if "/" in a.split("=", 1)[0]}
    return [o for o in extra if o.split("=", 1)[0] not in groups]


# ---------------------------------------------------------------------------------------------------- tiny inputs


class Workspace:
    """Tiny data, earlier commands' outputs and the argument substitutions, shared by the module's tests."""

    def __init__(self, root: Path, csv: Path) -> None:
        self.root, self.csv = root, csv
        self.data_dir = root / "data"
        self._layouts: dict[str, Path] = {}
        self.done: dict[str, object] = {}

    def layout(self, kind: str) -> Path:
        """A tiny tree of the dataset ``kind`` (the generic CSV for synthetic / csv)."""
        if kind in ("synthetic", "csv"):
            return self.csv.parent
        if kind not in self._layouts:
            from tests import layouts

            base = self.root / "layouts" / kind
            builders: dict[str, Callable[[], Path]] = {
                "mimic_cxr": lambda: layouts.build_mimic(base).root,
                "iu_xray": lambda: layouts.build_iu_r2gen(base).root,
                "chexpert": lambda: layouts.build_chexpert(base).root,
            }
            self._layouts[kind] = builders[kind]()
        return self._layouts[kind]

    def once(self, key: str, make: Callable[[], object]) -> object:
        if key not in self.done:
            self.done[key] = make()
        return self.done[key]

    def tool_path(self, key: str, value: str) -> Path:
        """``in_csv``: the tiny set's CSV (it has findings / impression columns); outputs: a fresh tmp path."""
        return self.csv if key == "in_csv" else self.root / "tools" / Path(value).name

    def demo_ckpt(self, last: bool = False) -> Path:
        """The best (or last) checkpoint of the README's demo command, run once."""
        run = self.once(
            "demo",
            lambda: _run_train(
                self, "demo", substitute(self, "cxr_vlp.train", DEMO_ARGS) + budget("cxr_vlp.train", DEMO_ARGS)
            ),
        )
        ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
        chosen = [c for c in ckpts if (c.name == "last.ckpt") == last]
        assert chosen, ckpts
        return chosen[0]

    def reportgen_ckpt(self) -> Path:
        """The best checkpoint of the README's report-generation command, run once."""
        module, args = split_command(REPORTGEN)
        run = self.once(
            "reportgen", lambda: _run_train(self, "reportgen", substitute(self, module, args) + budget(module, args))
        )
        return next(c for c in sorted((run / "checkpoints").glob("*.ckpt")) if c.name != "last.ckpt")

    def sweep(self) -> Path:
        """The folder of the README's Optuna sweep, run once as a subprocess (a multirun needs the real CLI)."""

        def run() -> Path:
            module, args = split_command(OPTUNA)
            sweep = self.root / "optuna_sweep"
            res = run_cli(
                [*substitute(self, module, args), *budget(module, args), f"hydra.sweep.dir={sweep}"], cwd=self.root
            )
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
            return sweep

        return self.once("sweep", run)  # type: ignore[return-value]


def _dataset_kind(module: str, args: list[str]) -> str:
    """The ``data=`` a command selects: given, or the experiment's (real-data experiments), else synthetic."""
    given = next((a.split("=", 1)[1] for a in args if a.startswith("data=")), None)
    if given:
        return given
    experiment = next((a.split("=", 1)[1] for a in args if a.startswith("+experiment=")), "")
    if experiment.endswith("_mimic"):
        return "mimic_cxr"
    if experiment.endswith("_iu_xray"):
        return "iu_xray"
    return "synthetic"


def substitute(ws: Workspace, module: str, args: list[str]) -> list[str]:
    """The command's arguments with every path-valued key's value replaced by a tiny input, plus the tiny synthetic
    generator (when the command uses the synthetic set) and the data folder in the test's tmp dir."""
    kind = _dataset_kind(module, args)
    out: list[str] = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "data.root":
            arg = f"data.root={ws.layout(kind)}"
        elif key == "ckpt_path":
            arg = f"ckpt_path={ws.reportgen_ckpt() if module == 'cxr_vlp.generate' else ws.demo_ckpt(last=True)}"
        elif key == "pretrained_ckpt":
            arg = f"pretrained_ckpt={ws.demo_ckpt()}"
        elif key == "image":
            arg = f"image={next(ws.csv.parent.glob('images/*/*/*.jpg'))}"
        elif key in ("in_csv", "out_csv", "out_txt", "out_dir"):
            arg = f"{key}={ws.tool_path(key, value)}"
        elif key == "num_patients":
            arg = "num_patients=12"
        elif key == "seed" and value == "S":
            arg = "seed=1"
        elif not value and "<" in arg:  # a positional placeholder such as <multirun dir>
            arg = str(ws.sweep())
        out.append(arg)
    if module in ("cxr_vlp.train", "cxr_vlp.prepare", "cxr_vlp.data.summary", "cxr_vlp.eval"):
        out.append(f"paths.data_dir={ws.data_dir}")
        if module != "cxr_vlp.eval" and kind == "synthetic":
            out += ["data.prepare.num_patients=48", "data.prepare.image_size=64"]
    return out


def _run_train(ws: Workspace, name: str, args: list[str]) -> Path:
    from cxr_vlp import train

    out = ws.root / "runs" / name
    cfg = compose_train(out, args)
    train.main(cfg)
    assert (out / "metrics.json").is_file(), f"{name}: no metrics.json"
    return out


# README commands whose outputs feed later commands
REPORTGEN = (
    "python -m cxr_vlp.train +experiment=reportgen_demo pretrained_ckpt=logs/demo/runs/<time>/checkpoints/<best>.ckpt"
)
OPTUNA = "python -m cxr_vlp.train -m +experiment=mcsl_demo hparams_search=mcsl_optuna"
DEMO = "python -m cxr_vlp.train +experiment=demo"
DEMO_ARGS = ["+experiment=demo"]


@pytest.fixture(scope="module")
def ws(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"), tiny_dataset)


# ---------------------------------------------------------------------------------------------------- runners


def _run_check(ws: Workspace, command: str) -> None:
    if command == "make demo":
        command = make_demo_command()
    module, args = split_command(command)
    if command == DEMO:
        run = ws.demo_ckpt().parents[1]
        metrics = json.loads((run / "metrics.json").read_text())
        assert "test/i2t/R@10" in metrics and (run / "split.json").is_file()
        return
    if command == REPORTGEN:
        assert ws.reportgen_ckpt().is_file()
        return
    if command == OPTUNA:
        summary = json.loads((ws.sweep() / "sweep_summary.json").read_text())
        assert [r["status"] for r in summary] == ["ok", "ok"]
        return
    full = substitute(ws, module, args) + budget(module, args)
    if module == "cxr_vlp.train":
        _run_train(ws, re.sub(r"\W+", "_", command)[-60:], full)
    elif module in ("cxr_vlp.eval", "cxr_vlp.prepare", "cxr_vlp.data.summary", "cxr_vlp.generate"):
        _run_hydra_app(ws, module, full)
    else:
        code = _entry_point(module)(full)
        assert code in (0, None), f"{command}: exit status {code}"


def _entry_point(module: str) -> Callable:
    """``main`` of what ``python -m <module>`` runs (the package's ``__main__`` for a package)."""
    import importlib

    loaded = importlib.import_module(module)
    if hasattr(loaded, "__path__"):
        loaded = importlib.import_module(f"{module}.__main__")
    return loaded.main


def _run_hydra_app(ws: Workspace, module: str, args: list[str]) -> None:
    config = {
        "cxr_vlp.eval": "eval",
        "cxr_vlp.prepare": "prepare",
        "cxr_vlp.data.summary": "summary",
        "cxr_vlp.generate": "generate",
    }[module]
    out = ws.root / "apps" / config
    cfg = compose_train(out, args, config_name=config)
    _entry_point(module)(cfg)
    if config == "eval":
        assert (out / "report.md").is_file() and (out / "metrics.json").is_file()


def _compose_check(ws: Workspace, command: str, tmp_path: Path) -> None:
    """Compose (every job of a sweep), resolve, and build what this machine can: data module (read from a tiny tree),
    trainer / logger nodes, the image backbone (a forward pass at the data's image size), the SLURM launcher node."""
    module, args = split_command(command)
    config = {"cxr_vlp.train": "train", "cxr_vlp.eval": "eval"}[module]
    args = substitute(ws, module, args)
    if config == "train":
        args += ["model.image_encoder.pretrained=false"]
    else:
        from cxr_vlp.eval.__main__ import expand_model_override

        args = expand_model_override(args)
    for number, job in enumerate(_sweep_jobs(args)):
        cfg = compose_train(tmp_path / "compose", job, config_name=config)
        container = OmegaConf.to_container(cfg, resolve=True)
        if number == 0 and cfg.get("data") is not None:
            text = (container.get("model") or {}).get("text_encoder", {})
            dm = instantiate(cfg.data, tokenizer=text.get("tokenizer"))
            dm.prepare_data()  # the synthetic generator (tiny); nothing for the published datasets
            assert len(dm.reader()) > 0  # the tiny tree is read as the dataset's layout
        if config == "train":
            _build_runtime_nodes(cfg, encoder_only=number > 0)


def _build_runtime_nodes(cfg, encoder_only: bool = False) -> None:
    import torch

    if not encoder_only:
        if "slurm" not in str(cfg.hydra.launcher.get("_target_", "")).lower():  # SLURM's needs its environment
            instantiate(
                cfg.trainer, accelerator="cpu", devices=1, strategy="auto", logger=False, enable_progress_bar=False
            )
        for node in (cfg.get("logger") or {}).values():
            if node is not None and "_target_" in node:
                instantiate(node)
    encoder = instantiate(cfg.model.image_encoder)
    size = int(cfg.data.transforms.image_size)
    with torch.no_grad():
        assert encoder.eval()(torch.zeros(1, 1, size, size)).shape[-1] == encoder.num_features


def _sweep_jobs(args: list[str]) -> list[list[str]]:
    """The overrides of every job of a ``-m`` command (Hydra's own sweep expansion), or the single run's."""
    if "-m" not in args:
        return [args]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    rest = [a for a in args if a != "-m"]
    parsed = OverridesParser.create().parse_overrides(rest)
    jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in jobs for job in batch]


# ---------------------------------------------------------------------------------------------------- tests


def test_readme_has_commands_and_make_demo_runs_one() -> None:
    commands = readme_commands()
    assert "make demo" in commands and len(commands) >= 10
    assert make_demo_command().startswith("python -m cxr_vlp.train")


def test_every_readme_command_has_a_check() -> None:
    unknown = [f"{page}: {c}" for c, page in shown_commands().items() if c not in CHECKS]
    assert not unknown, (
        "commands shown without a check in tests/integration/test_readme_commands.py CHECKS:\n" + "\n".join(unknown)
    )
    for command in [c for c in shown_commands() if CHECKS[c].how == "elsewhere"]:
        test_file, (module, _) = REPO_ROOT / CHECKS[command].why, split_command(command)
        assert test_file.is_file() and test_file.name.startswith("test_"), f"{command}: no test file {test_file}"
        assert module in test_file.read_text(), f"{command}: {test_file} does not mention {module}"


def test_the_docs_pages_are_read_too() -> None:
    shown = shown_commands()
    assert shown["python -m cxr_vlp.train +experiment=demo"] == "README.md"
    assert any(page.startswith("docs/") for page in shown.values())
    assert {str(p.relative_to(REPO_ROOT)) for p in documents()} >= {"README.md", "docs/index.md", "docs/results.md"}


def test_the_extraction_reads_blocks_continuations_and_inline_code() -> None:
    text = "a `python -m cxr_vlp.x k=v`\n```bash\npython -m cxr_vlp.train a=1 \\\n    b=2   # note\nls\n```\n"
    assert readme_commands(text) == ["python -m cxr_vlp.train a=1 b=2", "python -m cxr_vlp.x k=v"]


@pytest.mark.parametrize("command", [c for c in shown_commands() if CHECKS.get(c, Check("")).how == "compose"])
def test_readme_command_composes(command: str, ws: Workspace, tmp_path: Path) -> None:
    _compose_check(ws, command, tmp_path)


@pytest.mark.parametrize("command", [c for c in shown_commands() if CHECKS.get(c, Check("")).how in ("run", "cli")])
def test_readme_command_runs(command: str, ws: Workspace) -> None:
    _run_check(ws, command)
