"""The documentation: ``mkdocs build --strict`` (what ``make docs`` runs) succeeds, and fails on a broken link or a
page missing from the nav; the README is the front door (short, the two commands first, links that resolve); no
design citation points outside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
CONFIG = REPO_ROOT / "mkdocs.yml"
README_MAX_LINES = 150


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``site``."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_of_the_docs(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of docs/ and a config pointing at it (the API reference still reads the package from the repository):
    ``(config, docs_dir)``."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["docs_dir"] = str(docs)
    for plugin in cfg["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(REPO_ROOT)]
    config = tmp_path / "mkdocs.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config, docs


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    res = build(CONFIG, out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out


def page_html(site: Path, page: str) -> Path:
    """The built file of ``page`` (a path under docs/), with MkDocs' directory URLs."""
    stem = page.removesuffix(".md")
    return site / "index.html" if stem == "index" else site / stem / "index.html"


def test_the_site_builds_strict_with_every_page(site: Path) -> None:
    for page in sorted(DOCS.rglob("*.md")):
        assert page_html(site, str(page.relative_to(DOCS))).is_file(), page
    reference = page_html(site, "reference/inference.md").read_text()
    assert "CXRModel" in reference and "from_checkpoint" in reference  # the API reference comes from docstrings
    html = page_html(site, "index.md").read_text()
    assert "fonts.googleapis.com" not in html  # offline: no web fonts


@pytest.mark.parametrize("fault", ["broken link", "missing page"])
def test_a_broken_link_or_a_missing_page_fails_the_build(fault: str, tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    config, docs = copy_of_the_docs(tmp_path)
    if fault == "broken link":
        page = docs / "results.md"
        page.write_text(page.read_text() + "\nSee [the missing page](no_such_page.md).\n")
        expected = "no_such_page.md"
    else:
        (docs / "reliability.md").unlink()
        expected = "reliability.md"
    res = build(config, tmp_path / "site")
    assert res.returncode != 0
    assert expected in res.stdout + res.stderr


def test_readme_is_the_front_door(site: Path) -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    head = "\n".join(lines[:8])
    assert "make demo" in head and "make test" in head
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", README.read_text())
    assert len(links) >= 10 and any(page == "docs/results.md" for page, _ in links)
    for page, anchor in links:
        assert (REPO_ROOT / page).is_file(), f"README.md links to {page}, which does not exist"
        if anchor:
            html = page_html(site, page.removeprefix("docs/")).read_text()
            assert f'id="{anchor}"' in html, f"README.md links to {page}#{anchor}: no such anchor"


def test_the_docs_python_example_is_the_tested_readme_one() -> None:
    def example(text: str, heading: str) -> str:
        section = text.split(heading, 1)[1]
        return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)

    assert example((DOCS / "inference.md").read_text(), "## `CXRModel`") == example(README.read_text(), "## Python API")


def test_design_citations_point_into_the_repository() -> None:
    design = (DOCS / "design.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", design, flags=re.M))
    assert sections == {"1", "2", "3", "4", "5", "6"}
    outside = "DESIGN" + ".md"  # the old record outside the repository
    roots = [REPO_ROOT / d for d in ("cxr_vlp", "conf", "tests", "bench", "docs", "experiments")] + [README]
    files = [
        f
        for r in roots
        for f in ([r] if r.is_file() else r.rglob("*"))
        if f.is_file() and f.suffix in (".py", ".yaml", ".md", ".sh") and f != Path(__file__).resolve()
    ]
    stale, cited = [], set()
    for f in files:
        text = f.read_text(errors="replace")
        if outside in text:
            stale.append(str(f.relative_to(REPO_ROOT)))
        cited |= set(re.findall(r"docs/design\.md §(\d+)", text))
    assert not stale, f"citations of {outside} (use docs/design.md §N): {stale}"
    assert cited and cited <= sections, f"cited sections {sorted(cited)}, the record has {sorted(sections)}"
