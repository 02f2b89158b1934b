"""Static export: one self-contained HTML page of fixed example queries, :func:`export_static`.

The page is the explorer's own page with its script and style inlined and the answers of the example queries
embedded as JSON (images as PNG ``data:`` URIs), so it opens from disk or a mail attachment with no server and
requests nothing (its Content-Security-Policy forbids any fetch). Examples: image queries of the first
``studies`` studies of the split (with Grad-CAM for their ``cams`` most probable labels) and text queries of
``texts`` with their negated variants.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_vlp.explore.server import static_text
from cxr_vlp.explore.session import ExploreSession, data_uri, png_bytes

__all__ = ["DEFAULT_TEXTS", "EXPORT_CSP", "export_static"]

DEFAULT_TEXTS = ("pleural effusion", "cardiomegaly", "pneumothorax", "no acute cardiopulmonary process")
EXPORT_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)
GENERATOR = '<meta name="generator" content="cxr_vlp.explore">'
PAGE_NAME = "index.html"


def _script_safe(text: str) -> str:
    """Text that cannot close the ``<script>`` element it is inlined in."""
    return re.sub(r"</", r"<\\/", text)


def _image_answers(session: ExploreSession, index: int, cams: int, image_size: int) -> tuple[dict, dict]:
    answer = session.image_query(index=index)
    if session.images is not None:
        answer["query"]["image_url"] = data_uri(png_bytes(session.split_image(index), image_size))
    ranked = sorted(answer["zero_shot"], key=lambda z: -z["prob"])
    explain = (
        {z["label"]: session.explain(index=index, target=z["label"]) for z in ranked[:cams]}
        if session.images is not None
        else {}
    )
    return answer, explain


def _text_answer(session: ExploreSession, text: str, thumb_size: int) -> dict[str, Any]:
    answer = session.text_query(text)
    thumbs: dict[int, str] = {}
    for item in answer["results"]:
        if session.images is not None:
            i = item["index"]
            thumbs.setdefault(i, data_uri(png_bytes(session.split_image(i), thumb_size)))
            item["image_url"] = thumbs[i]
    return answer


def export_static(
    session: ExploreSession,
    out_dir: str | Path,
    studies: int = 4,
    texts: Sequence[str] = DEFAULT_TEXTS,
    cams: int = 3,
    image_size: int = 256,
    thumb_size: int = 128,
) -> Path:
    """Write ``<out_dir>/index.html`` (see the module docstring) and return its path. A file of that name that this
    exporter did not write is never replaced (``FileExistsError`` naming it)."""
    out = Path(out_dir)
    page = out / PAGE_NAME
    if page.exists() and GENERATOR not in page.read_text(encoding="utf-8", errors="replace")[:2000]:
        raise FileExistsError(
            f"{page} exists and was not written by the explorer's export: choose another export=<dir>"
        )
    if int(studies) < 0 or int(cams) < 0:
        raise ValueError(f"studies={studies} and cams={cams} must be non-negative")
    indices = list(range(min(int(studies), len(session.emb))))
    data: dict[str, Any] = {"info": {**session.info(), "static": True}, "image": {}, "explain": {}, "text": {}}
    listing = session.studies(0, len(session.emb))
    data["studies"] = {
        "total": len(indices),
        "offset": 0,
        "studies": [s for s in listing["studies"] if s["index"] in set(indices)],
    }
    for i in indices:
        data["image"][str(i)], data["explain"][str(i)] = _image_answers(session, i, int(cams), int(image_size))
    for text in texts:
        answer = _text_answer(session, text, int(thumb_size))
        data["text"][answer["text"]] = answer
        if answer["negated"] not in data["text"]:
            data["text"][answer["negated"]] = _text_answer(session, answer["negated"], int(thumb_size))
    html = static_text("index.html")
    css, js = static_text("app.css"), static_text("app.js")
    head = f'<meta http-equiv="Content-Security-Policy" content="{EXPORT_CSP}">'
    html = html.replace(GENERATOR, GENERATOR + "\n" + head, 1)
    html = html.replace('<link rel="stylesheet" href="/static/app.css">', f"<style>\n{_script_safe(css)}</style>", 1)
    blob = _script_safe(json.dumps(data, allow_nan=False, separators=(",", ":")))
    html = html.replace(
        '<script src="/static/app.js"></script>',
        f'<script id="explorer-data" type="application/json">{blob}</script>\n<script>\n{_script_safe(js)}</script>',
        1,
    )
    out.mkdir(parents=True, exist_ok=True)
    tmp = page.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(page)
    return page
