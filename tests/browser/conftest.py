"""Headless Chromium (Selenium) against a running explorer: the browser, the servers and the reference model.

The browser: ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (Debian's ``chromium`` and ``chromium-driver``;
``CHROMIUM`` / ``CHROMEDRIVER`` name others). Missing outside CI the tests skip; in CI (``CI`` set) they fail.
Each explorer is ``python -m cxr_vlp.explore`` on a tiny checkpoint trained here, bound to port 0 (the chosen port
is read from its output), so these tests run beside any others. ``CXR_VLP_EXPLORER_CKPT=<.ckpt>`` runs the CLIP
tests on that checkpoint instead (e.g. a demo run, for the screenshots); ``CXR_VLP_UPDATE_SCREENSHOTS=1`` copies
the screenshots into ``docs/img/``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cxr_vlp import CXRModel
from cxr_vlp.data.dataset import choose_image_indices
from cxr_vlp.eval.embed import SplitEmbeddings, embed_split
from tests.conftest import REPO_ROOT
from tests.integration.hydra_helpers import train_tiny_checkpoint

# a test split and the zero-shot task: metrics.json then holds validation-fitted thresholds
WITH_ZEROSHOT = [
    "test=true",
    "trainer.limit_test_batches=1",
    "evaluation.tasks=[zeroshot]",
    "evaluation.bootstrap.n_resamples=10",
    "evaluation.figures=false",
    "evaluation.device=cpu",
]
INSTALL_HINT = "apt-get install chromium chromium-driver"
SERVER_START_S = 300


def _tool(env: str, names: tuple[str, ...]) -> str | None:
    given = os.environ.get(env)
    if given:
        return given if Path(given).is_file() else None
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser_paths() -> tuple[str, str]:
    chromium = _tool("CHROMIUM", ("chromium", "chromium-browser"))
    driver = _tool("CHROMEDRIVER", ("chromedriver",))
    if chromium is None or driver is None:
        missing = "chromium" if chromium is None else "chromedriver"
        message = f"headless browser tests need Chromium and its driver ({missing} not found): {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def driver(browser_paths: tuple[str, str]) -> Iterator:
    """A headless Chromium with the DevTools performance log on (every network request the page makes)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--window-size=1440,960",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def requested_urls(browser) -> list[str]:
    """URLs of every request in the performance log since the last call (documents, scripts, fetches, images)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message.get("method") == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


@dataclass
class Explorer:
    """A running ``python -m cxr_vlp.explore`` and what the tests compare it with."""

    url: str
    ckpt: Path
    model: CXRModel
    split: SplitEmbeddings
    image_paths: list[str]
    process: subprocess.Popen


def start_explorer(ckpt: Path, log_dir: Path, extra: tuple[str, ...] = ()) -> tuple[str, subprocess.Popen]:
    """Start the CLI on port 0 and return its address (read from its output) and the process."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxr_vlp.explore",
            f"ckpt_path={ckpt}",
            "port=0",
            f"paths.log_dir={log_dir}",
            "device=cpu",
            *extra,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=SERVER_START_S)
        except queue.Empty:
            process.kill()
            raise RuntimeError("the explorer did not print its address in time:\n" + "".join(seen[-40:])) from None
        if line is None:
            raise RuntimeError(f"the explorer exited ({process.wait()}):\n" + "".join(seen[-40:]))
        seen.append(line)
        if line.startswith("explorer: http://"):
            return line.split(" ", 1)[1].strip(), process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def reference(ckpt: Path) -> tuple[CXRModel, SplitEmbeddings, list[str]]:
    """The checkpoint as CXRModel, its test split as the evaluation suite embeds it, and each study's image file
    (the first frontal view, as the evaluation reads it)."""
    model = CXRModel.from_checkpoint(ckpt)
    datamodule = instantiate(OmegaConf.create(model.payload.record.data), tokenizer=None)
    datamodule.use_tokenizer(model.tokenizer)
    datamodule.setup("test")
    split = embed_split(model, datamodule, "test")
    table = datamodule.tables["test"]
    rows = {sid: i for i, sid in enumerate(table.study_ids)}
    rng = np.random.default_rng(0)
    paths = []
    for sid in split.study_ids:
        i = rows[sid]
        paths.append(table.image_paths[i][choose_image_indices(table.view_names[i], 1, False, rng)[0]])
    return model, split, paths


def explorer_for(tiny_dataset: Path, tmp: Path, experiment: str, env_ckpt: bool = False) -> Iterator[Explorer]:
    given = os.environ.get("CXR_VLP_EXPLORER_CKPT") if env_ckpt else None
    ckpt = Path(given) if given else train_tiny_checkpoint(tiny_dataset, tmp / "run", experiment, WITH_ZEROSHOT)
    url, process = start_explorer(ckpt, tmp / "logs")
    try:
        model, split, paths = reference(ckpt)
        yield Explorer(url, ckpt, model, split, paths, process)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def clip_explorer(browser_paths, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Explorer]:
    yield from explorer_for(tiny_dataset, tmp_path_factory.mktemp("explore_clip"), "clip_demo", env_ckpt=True)


def save_screenshot(browser, tmp_path: Path, name: str, width: int = 1100, max_bytes: int = 145_000) -> Path:
    """The window as a small PNG (palette; narrower until under ``max_bytes``); copied to ``docs/img/<name>`` when
    ``CXR_VLP_UPDATE_SCREENSHOTS=1``."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    out = tmp_path / name
    for w in (width, 960, 840, 720):
        shot = (
            image.resize((w, round(image.height * w / image.width)), Image.Resampling.LANCZOS)
            if image.width > w
            else image
        )
        shot.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        if out.stat().st_size < max_bytes:
            break
    if os.environ.get("CXR_VLP_UPDATE_SCREENSHOTS") == "1" and out.stat().st_size < max_bytes:
        target = REPO_ROOT / "docs" / "img" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, target)
    return out
