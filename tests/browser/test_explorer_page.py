"""The explorer page in headless Chromium against ``python -m cxr_vlp.explore`` on a tiny CLIP checkpoint: the
numbers the page shows are CXRModel's, and the page requests nothing but the local server."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from cxr_vlp.data.transforms import load_grayscale
from cxr_vlp.explore.negation import negated
from cxr_vlp.inference import Gallery
from tests.browser.conftest import Explorer, requested_urls, save_screenshot
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]
WAIT_S = 120
SHOWN = 1e-3 / 2 + 1e-6  # three decimals on the page


def _wait(driver, condition, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout).until(condition)


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")


def _local_only(driver, url: str) -> list[str]:
    urls = requested_urls(driver)
    outside = [u for u in urls if not (u.startswith(url) or u.startswith("data:"))]
    assert not outside, f"the page requested resources outside the local server: {outside}"
    return urls


def _png(data_uri: str) -> np.ndarray:
    assert data_uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB"))


def _text_gallery(ex: Explorer) -> Gallery:
    """The split's reports as a text gallery (built directly: reports can be longer than a file name may be)."""
    emb = ex.model.text_embeddings(list(ex.split.texts))
    return Gallery(modality="text", ids=list(ex.split.texts), embeddings=emb.mean, logvar=emb.logvar)


def _check_probs(driver, explorer: Explorer, image) -> None:
    expected = explorer.model.zero_shot([image])
    rows = driver.find_elements(By.CSS_SELECTOR, "#probs .prob-row")
    assert [r.get_attribute("data-label") for r in rows] == list(expected.columns)
    thresholds = expected.attrs["thresholds"]
    for row in rows:
        label = row.get_attribute("data-label")
        want = float(expected[label].iloc[0])
        assert abs(float(row.get_attribute("data-prob")) - want) < 1e-5, label
        assert abs(float(row.find_element(By.CLASS_NAME, "value").text) - want) <= SHOWN, label
        shown_threshold = row.get_attribute("data-threshold")
        if label in thresholds:
            assert abs(float(shown_threshold) - thresholds[label]) < 1e-9, label
            tick = row.find_element(By.CLASS_NAME, "thr")
            assert tick.is_displayed()
        else:
            assert shown_threshold == ""
        width = driver.execute_script("return arguments[0].querySelector('.fill').style.width", row)
        assert abs(float(width.rstrip("%")) - 100 * want) < 0.01, label


def _check_cam(driver, explorer: Explorer, image) -> None:
    overlay = _wait(driver, EC.visibility_of_element_located((By.ID, "cam-overlay")))
    target = overlay.get_attribute("data-target")
    assert target in explorer.model.thresholds.index or target
    cam = explorer.model.explain(image, target)
    shown = _png(overlay.get_attribute("src"))
    assert shown.shape == np.asarray(cam.overlay).shape
    assert np.abs(shown.astype(int) - np.asarray(cam.overlay).astype(int)).max() <= 1
    assert abs(float(overlay.get_attribute("data-heat-max")) - float(cam.heatmap.max())) < 1e-5
    assert driver.execute_script("return arguments[0].naturalWidth", overlay) == cam.heatmap.shape[1]


def test_image_query_shows_cxrmodel_probabilities_reports_and_gradcam(
    driver, clip_explorer: Explorer, tmp_path: Path
) -> None:
    ex = clip_explorer
    _open(driver, ex.url)
    index = min(1, len(ex.split) - 1)
    Select(driver.find_element(By.ID, "study-select")).select_by_value(str(index))
    driver.find_element(By.ID, "run-image").click()
    _wait(driver, lambda d: d.find_element(By.ID, "image-result").get_attribute("data-query") == f"index:{index}")
    _wait(driver, lambda d: d.find_element(By.ID, "cam-overlay").get_attribute("data-target"))
    path = ex.image_paths[index]
    _check_probs(driver, ex, path)

    gallery = _text_gallery(ex)
    k = len(driver.find_elements(By.CSS_SELECTOR, "#retrieved li"))
    assert k == min(10, len(ex.split))
    expected = ex.model.retrieve([path], gallery, k=k)
    items = driver.find_elements(By.CSS_SELECTOR, "#retrieved li")
    scores = [float(li.get_attribute("data-score")) for li in items]
    np.testing.assert_allclose(scores, expected["score"].to_numpy(), atol=1e-4)
    assert sorted(li.find_element(By.CLASS_NAME, "text").text for li in items) == sorted(expected["item"])
    true_items = [li for li in items if "true-report" in li.get_attribute("class")]
    own = ex.split.texts[index]
    assert all(li.find_element(By.CLASS_NAME, "text").text == own for li in true_items)
    if k == len(ex.split):  # the whole split is listed: its own report is there, marked once
        assert len(true_items) == 1 and true_items[0].find_element(By.CLASS_NAME, "badge").text == "true report"

    truth = driver.find_element(By.ID, "truth")
    assert truth.is_displayed() and own.split(".")[0] in truth.find_element(By.ID, "truth-report").text
    positives = {
        c.get_attribute("data-label")
        for c in driver.find_elements(By.CSS_SELECTOR, "#truth-labels .chip")
        if c.get_attribute("data-label")
    }
    labels = ex.split.labels[index].numpy()
    from cxr_vlp.text.labels import CHEXPERT_LABELS

    assert positives == {n for n, v in zip(CHEXPERT_LABELS, labels) if v >= 1.0}
    _check_cam(driver, ex, path)

    # Grad-CAM for a free-text prompt
    driver.find_element(By.ID, "cam-prompt").send_keys("small left pleural effusion")
    driver.find_element(By.ID, "run-cam").click()
    _wait(
        driver,
        lambda d: d.find_element(By.ID, "cam-overlay").get_attribute("data-target") == "small left pleural effusion",
    )
    _check_cam(driver, ex, path)
    img = driver.find_element(By.ID, "query-image")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
    urls = _local_only(driver, ex.url)
    assert any("/api/query/image" in u for u in urls) and any("/api/explain" in u for u in urls)
    shot = save_screenshot(driver, tmp_path, "explorer.png")
    assert shot.stat().st_size < 150_000


def test_upload_of_a_16_bit_png_of_odd_size(driver, clip_explorer: Explorer, tmp_path: Path) -> None:
    ex = clip_explorer
    base = load_grayscale(ex.image_paths[0])
    upload = tmp_path / "odd16.png"
    cv2.imwrite(str(upload), (cv2.resize(base, (83, 131)).astype(np.uint16) * 257 + 77).astype(np.uint16))
    assert cv2.imread(str(upload), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    _open(driver, ex.url)
    driver.find_element(By.ID, "upload").send_keys(str(upload))
    _wait(
        driver,
        lambda d: (d.find_element(By.ID, "image-result").get_attribute("data-query") or "").startswith("upload:"),
    )
    _wait(driver, lambda d: d.find_element(By.ID, "cam-overlay").get_attribute("data-target"))
    assert driver.find_element(By.ID, "query-name").text == "uploaded image"
    assert not driver.find_element(By.ID, "truth").is_displayed()
    _check_probs(driver, ex, upload)
    items = driver.find_elements(By.CSS_SELECTOR, "#retrieved li")
    expected = ex.model.retrieve([upload], _text_gallery(ex), k=len(items))
    np.testing.assert_allclose([float(li.get_attribute("data-score")) for li in items], expected["score"], atol=1e-4)
    assert not driver.find_elements(By.CSS_SELECTOR, "#retrieved li.true-report")
    _check_cam(driver, ex, upload)
    _local_only(driver, ex.url)


def test_text_query_and_its_negated_variant(driver, clip_explorer: Explorer, tmp_path: Path) -> None:
    ex = clip_explorer
    _open(driver, ex.url)
    driver.find_element(By.ID, "tab-text").click()
    text = "small left pleural effusion"
    driver.find_element(By.ID, "text-input").send_keys(text)
    driver.find_element(By.ID, "run-text").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#text-results .hit"))
    gallery = ex.model.gallery(ex.image_paths, ids=ex.split.study_ids)

    def check(container: str, query: str) -> None:
        hits = driver.find_elements(By.CSS_SELECTOR, f"{container} .hit")
        expected = ex.model.retrieve([query], gallery, k=len(hits))
        assert len(hits) == min(10, len(ex.split))
        np.testing.assert_allclose([float(h.get_attribute("data-score")) for h in hits], expected["score"], atol=1e-4)
        shown = [h.get_attribute("data-study") for h in hits]
        assert sorted(shown) == sorted(expected["item"])
        for h, score in zip(hits, expected["score"]):
            assert abs(float(h.find_element(By.CLASS_NAME, "score").text.split("·")[1]) - score) <= SHOWN + 1e-4
        _wait(
            driver,
            lambda d: all(
                d.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0", h.find_element(By.TAG_NAME, "img")
                )
                for h in hits
            ),
        )

    check("#text-results", text)
    button = driver.find_element(By.ID, "run-negated")
    assert button.is_enabled()
    assert button.get_attribute("data-text") == negated(text) == "no small left pleural effusion"
    button.click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#negated-results .hit"))
    assert negated(text) in driver.find_element(By.CSS_SELECTOR, "#negated-results h2").text
    check("#negated-results", negated(text))
    _local_only(driver, ex.url)
    shot = save_screenshot(driver, tmp_path, "explorer_text.png")
    assert shot.stat().st_size < 150_000


def test_static_export_is_self_contained(driver, clip_explorer: Explorer, tmp_path: Path) -> None:
    ex = clip_explorer
    out = tmp_path / "export"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr_vlp.explore",
            f"ckpt_path={ex.ckpt}",
            f"export={out}",
            f"paths.log_dir={tmp_path / 'logs'}",
            "export_options.studies=2",
            "export_options.texts=[pleural effusion]",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    page = out / "index.html"
    assert page.is_file() and f"explorer page: {page}" in run.stdout
    html = page.read_text()
    assert 'src="/static' not in html and 'href="/static' not in html
    url = page.as_uri()
    _open(driver, url)
    Select(driver.find_element(By.ID, "study-select")).select_by_value("0")
    driver.find_element(By.ID, "run-image").click()
    _wait(driver, lambda d: d.find_element(By.ID, "cam-overlay").get_attribute("data-target"))
    _check_probs(driver, ex, ex.image_paths[0])
    _check_cam(driver, ex, ex.image_paths[0])
    driver.find_element(By.ID, "tab-text").click()
    driver.find_element(By.ID, "run-text").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#text-results .hit"))
    driver.find_element(By.ID, "run-negated").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#negated-results .hit"))
    urls = requested_urls(driver)
    assert urls and all(u == url or u.startswith("data:") for u in urls), urls


@pytest.fixture(scope="module")
def head_explorers(browser_paths, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    from tests.browser.conftest import explorer_for

    running = {}
    gens = []
    for experiment in ("probclip_vib_demo", "clear_demo"):
        gen = explorer_for(tiny_dataset, tmp_path_factory.mktemp(f"explore_{experiment}"), experiment)
        running[experiment] = next(gen)
        gens.append(gen)
    yield running
    for gen in gens:
        gen.close()


def test_probclip_uncertainty_and_its_decile(driver, head_explorers) -> None:
    from cxr_vlp.explore.session import decile

    ex = head_explorers["probclip_vib_demo"]
    _open(driver, ex.url)
    index = len(ex.split) - 1
    Select(driver.find_element(By.ID, "study-select")).select_by_value(str(index))
    driver.find_element(By.ID, "run-image").click()
    shown = _wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, "#uncertainty .uncertainty")))
    value = float(ex.model.uncertainty([ex.image_paths[index]])[0])
    split_values = ex.split.image_uncertainty.double().numpy()
    assert abs(float(shown.get_attribute("data-value")) - value) <= 1e-4 * max(1.0, abs(value))
    own = split_values[index]  # the page shows the split study's cached uncertainty
    assert int(shown.get_attribute("data-decile")) == min(10, max(1, int(np.ceil(10 * np.mean(split_values <= own)))))
    assert int(shown.get_attribute("data-decile")) == decile(own, split_values)
    assert f"decile {shown.get_attribute('data-decile')} of 10" in shown.text
    _check_probs(driver, ex, ex.image_paths[index])
    _local_only(driver, ex.url)


def test_clear_top_concepts_and_contributions(driver, head_explorers) -> None:
    ex = head_explorers["clear_demo"]
    _open(driver, ex.url)
    Select(driver.find_element(By.ID, "study-select")).select_by_value("0")
    driver.find_element(By.ID, "run-image").click()
    _wait(driver, EC.visibility_of_element_located((By.ID, "concepts")))
    rows = driver.find_elements(By.CSS_SELECTOR, "#concept-top tr.concept")
    expected = ex.model.concepts(ex.image_paths[0], top=len(rows))
    assert len(rows) == 8
    np.testing.assert_allclose([float(r.get_attribute("data-score")) for r in rows], expected["score"], atol=1e-5)
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == list(expected["concept"])
    contributions = [
        float(r.get_attribute("data-value"))
        for r in driver.find_elements(By.CSS_SELECTOR, "#concept-contrib tr.contribution")
    ]
    assert len(contributions) == 8 and contributions == sorted(contributions, reverse=True)
    assert "logit" in driver.find_element(By.ID, "contrib-title").text
    _local_only(driver, ex.url)
