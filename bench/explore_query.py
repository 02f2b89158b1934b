"""Explorer latency: a text query over a 10,000-study gallery, and the first page load with the cache warm.

    python bench/explore_query.py [ckpt_path=<contrastive .ckpt>] [n=10000] [queries=30]

The gallery: ``n`` random unit image embeddings (the model's embedding size) with random reports, served by the real
HTTP server; each query runs the checkpoint's real text tower, the head's similarity over the gallery and the top-k,
and is timed client-side (request → parsed JSON) as the page sees it. Page load: ``load_session`` on the checkpoint's
own test split once to warm the embedding cache, then again (cache warm), then the page's first requests in order
(page, script, style, info, study list, first image). Without ``ckpt_path`` the newest ``logs/*/runs/*/checkpoints/
last.ckpt`` of a contrastive run is used, else a tiny one is trained in a temporary folder. Prints, never asserts.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXTS = [
    "small left pleural effusion",
    "cardiomegaly",
    "no acute cardiopulmonary process",
    "right lower lobe pneumonia",
    "mild pulmonary edema",
    "there is a large right pneumothorax",
    "endotracheal tube in place",
    "bibasilar atelectasis",
    "no pleural effusion",
    "the heart is mildly enlarged",
]


def _args(argv: list[str]) -> dict[str, str]:
    out = {"ckpt_path": "", "n": "10000", "queries": "30"}
    for a in argv:
        key, _, value = a.partition("=")
        if key not in out:
            raise SystemExit(f"unknown argument {key!r}; known: {', '.join(out)}")
        out[key] = value
    return out


def _checkpoint(given: str, tmp: Path) -> Path:
    if given:
        return Path(given)
    from cxr_vlp.inference.payload import payload_from_checkpoint

    for ckpt in sorted(ROOT.glob("logs/*/runs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if payload_from_checkpoint(ckpt).kind == "contrastive":
            return ckpt
    from cxr_vlp.data.synthetic import generate_dataset
    from tests.integration.hydra_helpers import train_tiny_checkpoint

    csv = Path(generate_dataset(tmp / "data", num_patients=48, seed=3, image_size=64))
    return train_tiny_checkpoint(csv, tmp / "run", "clip_demo")


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
    return body


def _post(conn: http.client.HTTPConnection, path: str, payload: dict) -> dict:
    conn.request("POST", path, body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    if resp.status != 200:
        raise RuntimeError(f"POST {path}: {resp.status} {body}")
    return body


def text_queries(model, n: int, queries: int) -> None:
    from cxr_vlp.eval.embed import SplitEmbeddings
    from cxr_vlp.explore.server import make_server
    from cxr_vlp.explore.session import ExploreSession

    d = int(model.encode_texts(["x"]).shape[1])
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    logvar = torch.full((n, d), -4.0) if model.probabilistic else None
    reports = [f"synthetic report {i}: {TEXTS[i % len(TEXTS)]}" for i in range(n)]
    emb = SplitEmbeddings(
        split="test",
        image=image,
        text=F.normalize(torch.randn(n, d, generator=g), dim=-1),
        features=torch.zeros(n, 1),
        labels=torch.full((n, 14), float("nan")),
        study_ids=[f"s{i:05d}" for i in range(n)],
        texts=reports,
        image_logvar=logvar,
        text_logvar=logvar,
    )
    pixels = np.zeros((64, 64), np.uint8)
    session = ExploreSession(model, emb, images=lambda i: pixels, k=10)
    server = make_server(session, "127.0.0.1", 0)
    server.start()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        _post(conn, "/api/query/text", {"text": "warm up"})
        times, inner = [], []
        for q in range(queries):
            text = f"{TEXTS[q % len(TEXTS)]} {q}"
            start = time.perf_counter()
            answer = _post(conn, "/api/query/text", {"text": text})
            times.append(time.perf_counter() - start)
            assert len(answer["results"]) == 10
            start = time.perf_counter()
            session.text_query(text)
            inner.append(time.perf_counter() - start)
    finally:
        conn.close()
        server.shutdown()
        server.server_close()
    ms = sorted(1000 * t for t in times)
    print(
        f"text query over {n} studies (D={d}, {model.name}), {queries} queries, torch threads "
        f"{torch.get_num_threads()}: median {statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} "
        f"ms, max {ms[-1]:.1f} ms over HTTP; session alone median {1000 * statistics.median(inner):.1f} ms "
        f"(target < 200 ms)"
    )


def page_load(ckpt: Path, log_dir: Path) -> None:
    from cxr_vlp.explore.build import load_session
    from cxr_vlp.explore.server import make_server

    start = time.perf_counter()
    load_session(ckpt, log_dir=log_dir)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    session = load_session(ckpt, log_dir=log_dir)
    warm = time.perf_counter() - start
    server = make_server(session, "127.0.0.1", 0)
    server.start()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        start = time.perf_counter()
        for path in (
            "/",
            "/static/app.js",
            "/static/app.css",
            "/api/info",
            "/api/studies?offset=0&limit=200&q=",
            "/api/image/0.png?size=256",
        ):
            _get(conn, path)
        first = time.perf_counter() - start
    finally:
        conn.close()
        server.shutdown()
        server.server_close()
    print(
        f"{ckpt} ({len(session.emb)} {session.emb.split} studies): start-up {cold:.2f} s with the cache cold, "
        f"{warm:.2f} s warm; first page load (page, script, style, info, study list, first image) "
        f"{1000 * first:.0f} ms with the cache warm (target < 2 s)"
    )


def main() -> None:
    from cxr_vlp.inference.model import CXRModel

    args = _args(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(args["ckpt_path"], Path(tmp))
        model = CXRModel.from_checkpoint(ckpt)
        text_queries(model, int(args["n"]), int(args["queries"]))
        page_load(ckpt, Path(tmp) / "logs")


if __name__ == "__main__":
    main()
