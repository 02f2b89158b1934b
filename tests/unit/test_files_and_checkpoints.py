"""Shared files and checkpoints: the tokenizer cache follows the umask, and remote checkpoint URLs are read
weights-only like local files (a crafted pickle served over HTTP is refused) or refused by name."""

from __future__ import annotations

import functools
import http.server
import os
import pickle
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cxr_vlp.checkpoint import load_module
from cxr_vlp.data.tokenizer import cached_wordpiece
from cxr_vlp.utils.checkpoint import is_remote, load_checkpoint
from cxr_vlp.utils.files import current_umask

TEXTS = ["No acute cardiopulmonary process.", "Small left pleural effusion.", "Heart size is normal."] * 3


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_tokenizer_cache_file_mode_follows_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        cached_wordpiece(TEXTS, tmp_path, vocab_size=60, min_frequency=1)
    finally:
        os.umask(old)
    (path,) = tmp_path.glob("wordpiece_*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on localhost serving ``tmp_path / 'www'``; yields (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_http_checkpoint_loads_weights_only(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    weights = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    torch.save(weights, root / "good.ckpt")
    loaded = load_checkpoint(f"{base}/good.ckpt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], weights["state_dict"]["w"])

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(marker)}, root / "crafted.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(f"{base}/crafted.ckpt")
    with pytest.raises(pickle.UnpicklingError):  # the model loader of eval / generate goes through it too
        load_module(f"{base}/crafted.ckpt")
    assert not marker.exists(), "the crafted checkpoint ran code"
    with pytest.raises(OSError, match=r"missing\.ckpt: download failed"):
        load_checkpoint(f"{base}/missing.ckpt")


def test_unreadable_url_schemes_are_refused_by_name() -> None:
    assert is_remote("s3://bucket/run/last.ckpt") and is_remote("https://x/y.ckpt")
    assert not is_remote("/data/run/last.ckpt") and not is_remote("file:///data/last.ckpt")
    with pytest.raises(ValueError, match=r"checkpoint nosuch://bucket/x\.ckpt: nosuch:// paths cannot be read"):
        load_checkpoint("nosuch://bucket/x.ckpt")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"s3://bucket/last\.ckpt: s3:// paths cannot be read.*s3fs"):
            load_checkpoint("s3://bucket/last.ckpt")


def test_file_url_is_a_local_path(tmp_path: Path) -> None:
    torch.save({"a": torch.ones(2)}, tmp_path / "x.ckpt")
    assert torch.equal(load_checkpoint(f"file://{tmp_path / 'x.ckpt'}")["a"], torch.ones(2))
