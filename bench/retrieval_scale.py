"""Time and peak memory of exact retrieval over N x N at dimension D: our chunked scan vs faiss exact search.

    python bench/retrieval_scale.py [n=20000] [d=512] [chunk=1024] [k=10] [device=cpu|cuda] [rounds=1]
    python bench/retrieval_scale.py n=50000      # the figures of docs: 50k and 100k (minutes on 2 cores each)
    python bench/retrieval_scale.py n=100000

Embeddings: random unit image vectors, each text = normalise(image + noise) so the metrics are not trivial.
Each method runs in its own process, alternating ours / faiss for ``rounds`` rounds; peak memory = that
process's RSS high-water mark minus its RSS once the embeddings (torch tensors for ours, numpy arrays for
faiss) exist. Prints each run, then the ratio ours / faiss of the median times and the peak memories.
Ours: cxr_vlp.metrics.retrieval.scan_retrieval (the rank of every match + top-k, chunk x N scores at a time).
faiss: IndexFlatIP exact inner-product search of the top-k (faiss-cpu). Both report R@1/5/10 of image -> text.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def _args(argv: list[str]) -> dict[str, str]:
    out = {"n": "20000", "d": "512", "chunk": "1024", "k": "10", "device": "cpu", "rounds": "1", "worker": ""}
    for a in argv:
        key, _, value = a.partition("=")
        if key not in out:
            raise SystemExit(f"unknown argument {key!r}; known: {', '.join(out)}")
        out[key] = value
    return out


def _embeddings(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((n, d), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = rng.standard_normal((n, d), dtype=np.float32)  # in place from here: no temporary raises the baseline
    txt *= np.float32(1.5 / np.sqrt(d) * 4)
    txt += img
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _reset_peak() -> float:
    """Reset the RSS high-water mark to the current RSS (Linux: ``5`` to /proc/self/clear_refs); the baseline."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(method: str, n: int, d: int, chunk: int, k: int, device: str) -> dict:
    img, txt = _embeddings(n, d)
    if method == "ours":  # libraries imported and inputs made before the baseline: count the work only
        import torch

        from cxr_vlp.metrics.retrieval import dot_score_rows, metrics_from_ranks, scan_retrieval

        # torch-allocated tensors, as the evaluation has them
        q, g = torch.from_numpy(img).clone().to(device), torch.from_numpy(txt).clone().to(device)
        del img, txt
    else:
        import faiss
    base = _reset_peak()
    start = time.perf_counter()
    if method == "ours":
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        scan = scan_retrieval(dot_score_rows(q, g), n, n, k=k, chunk_size=chunk)
        if device == "cuda":
            torch.cuda.synchronize()
        m = metrics_from_ranks(scan.ranks)
        recalls = {key: m[key] for key in ("R@1", "R@5", "R@10")} | {"MedR": m["MedR"]}
        extra = {"gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20} if device == "cuda" else {}
    elif method == "faiss":
        index = faiss.IndexFlatIP(d)
        index.add(txt)
        _, top = index.search(img, k)
        hit = top == np.arange(n)[:, None]
        recalls = {f"R@{kk}": float(hit[:, :kk].any(axis=1).mean()) for kk in (1, 5, 10) if kk <= k}
        extra = {"threads": faiss.omp_get_max_threads()}
    else:
        raise SystemExit(f"unknown method {method!r}")
    seconds = time.perf_counter() - start
    return {"method": method, "seconds": seconds, "peak_extra_mb": _peak_mb() - base, **recalls, **extra}


def _run(method: str, argv: list[str]) -> dict | None:
    cmd = [sys.executable, __file__, *argv, f"worker={method}"]
    # large blocks via mmap, returned to the OS on free: the high-water mark then reflects live memory, not
    # glibc arena fragmentation
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        print(f"{method}: failed\n{res.stderr[-2000:]}")
        return None
    r = json.loads(res.stdout.strip().splitlines()[-1])
    recalls = " ".join(f"{key}={100 * r[key]:.2f}%" for key in ("R@1", "R@5", "R@10") if key in r)
    more = " ".join(f"{key}={r[key]:.0f}" for key in ("MedR", "gpu_peak_mb", "threads") if key in r)
    print(
        f"{method:>6}: {r['seconds']:8.1f} s   peak memory +{r['peak_extra_mb']:7.0f} MB   {recalls} {more}", flush=True
    )
    return r


def main(argv: list[str]) -> None:
    a = _args(argv)
    n, d, chunk, k = int(a["n"]), int(a["d"]), int(a["chunk"]), int(a["k"])
    if a["worker"]:
        print(json.dumps(worker(a["worker"], n, d, chunk, k, a["device"])))
        return
    full_gb = n * n * 4 / 2**30
    print(f"N = {n:,} queries x {n:,} gallery, D = {d}; a full float32 similarity matrix would be {full_gb:.1f} GiB")
    runs: dict[str, list[dict]] = {"ours": [], "faiss": []}
    for i in range(int(a["rounds"])):
        for method in ("ours", "faiss") if i % 2 == 0 else ("faiss", "ours"):
            r = _run(method, argv)
            if r is not None:
                runs[method].append(r)
    if runs["ours"] and runs["faiss"]:
        sec = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
        mem = {m: max(r["peak_extra_mb"] for r in rs) for m, rs in runs.items()}
        print(
            f"ours / faiss: time {sec['ours'] / sec['faiss']:.2f}x (median {sec['ours']:.1f} s vs "
            f"{sec['faiss']:.1f} s), peak extra memory {mem['ours']:.0f} MB vs {mem['faiss']:.0f} MB"
        )
    print(
        f"(ours: chunk = {chunk} rows -> {chunk * n * 4 / 2**20:.0f} MB of scores per block; it also returns every "
        "rank, which top-k search alone cannot give)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
