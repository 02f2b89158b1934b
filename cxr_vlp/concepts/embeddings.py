"""Frozen text-embedding model for the concept bank (the CLEAR "LLM" space), with an on-disk cache.

:class:`ConceptEmbedder` wraps any Hugging Face encoder (hub name or local directory, resolved through
:func:`~cxr_vlp.utils.hub.resolve_hf_model`, so an unavailable model fails at once with
:class:`~cxr_vlp.utils.hub.ModelNotAvailableError`): masked mean pooling over the last hidden state,
L2-normalised, eval mode, no gradients.

:func:`embed_concepts` caches the ``[K, E]`` matrix as a safetensors file named by a hash of the model
identity (the hashes of the model directory's files), the concept list and the pooling; a later call with
the same key reads the file and never loads the model. Files are written atomically (tmp + rename).

:class:`HashingEmbedder` / :func:`hashing_embeddings` are the offline alternative (no model, no cache needed):
character n-gram hashing, so lexically similar concepts get similar vectors. Used by the CPU demo and the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cxr_vlp.utils.hub import resolve_hf_model

__all__ = [
    "ConceptEmbedder",
    "HashingEmbedder",
    "cache_key",
    "embed_concepts",
    "hashing_embeddings",
    "load_text_model",
    "model_fingerprint",
]

POOLING = "masked_mean_l2"
_FULL_HASH_LIMIT = 64 * 1024 * 1024  # files above this are fingerprinted by size + head + tail
_CHUNK = 1024 * 1024


def load_text_model(path: str):
    """``(tokenizer, model)`` from a local model directory; the one place the model is loaded."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    return tokenizer, model


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(fh.read(_CHUNK))
            fh.seek(size - _CHUNK)
            h.update(fh.read(_CHUNK))
    return h.hexdigest()


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Hash of every file (relative path + content digest) under a model directory; hidden files skipped."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        h.update(rel.encode())
        h.update(_file_digest(f).encode())
    return h.hexdigest()


def cache_key(model_fp: str, concepts: Sequence[str], pooling: str = POOLING, max_length: int = 64) -> str:
    payload = json.dumps(
        {"model": model_fp, "concepts": list(concepts), "pooling": pooling, "max_length": max_length}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ConceptEmbedder:
    """Frozen encoder: ``embed(texts) -> [N, E]`` masked-mean-pooled, L2-normalised float32 embeddings."""

    def __init__(
        self,
        model_name_or_path: str,
        device: str | torch.device = "cpu",
        max_length: int = 64,
        allow_download: bool = True,
    ) -> None:
        self.name = model_name_or_path
        self.path = resolve_hf_model(model_name_or_path, allow_download=allow_download)
        self.tokenizer, self.model = load_text_model(self.path)
        self.model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.model.to(self.device)
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, int(limit))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        outs = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            outs.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        if not outs:
            return torch.empty(0, self.dim)
        return torch.cat(outs)


def _atomic_save(tensor: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"embeddings": tensor.contiguous()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def embed_concepts(
    concepts: Sequence[str],
    model_name_or_path: str,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    max_length: int = 64,
    allow_download: bool = True,
) -> torch.Tensor:
    """``[K, E]`` embeddings of ``concepts``, read from ``cache_dir`` when cached, else computed and cached."""
    concepts = list(concepts)
    if not concepts:
        raise ValueError("embed_concepts needs at least one concept")
    model_dir = resolve_hf_model(model_name_or_path, allow_download=allow_download)
    key = cache_key(model_fingerprint(model_dir), concepts, POOLING, max_length)
    path = Path(cache_dir).expanduser() / f"concepts-{key}.safetensors"
    if path.is_file():
        emb = load_file(str(path))["embeddings"]
        if emb.shape[0] == len(concepts):
            return emb
    embedder = ConceptEmbedder(model_dir, device=device, max_length=max_length, allow_download=False)
    emb = embedder.embed(concepts, batch_size=batch_size)
    _atomic_save(emb, path, {"model": str(model_name_or_path), "num_concepts": str(len(concepts)), "pooling": POOLING})
    return emb


class HashingEmbedder:
    """Offline, model-free concept embedder: character n-gram hashing, L2-normalised.

    ``embed(texts) -> [N, dim]`` float32 rows of scikit-learn's ``HashingVectorizer(analyzer="char_wb",
    ngram_range=ngram_range, n_features=dim, alternate_sign=True, norm="l2")``: every n-gram of the
    space-padded words is hashed (MurmurHash3, fixed seed) into one of ``dim`` signed buckets. Deterministic
    across processes and machines, needs no download and no cache, and strings sharing many n-grams
    ("pleural effusion" / "small pleural effusion") get a high cosine while unrelated ones are close to
    orthogonal. The signed buckets keep inner products unbiased under collisions. A text without any
    n-gram (empty) would be a zero row and is refused.
    """

    def __init__(self, dim: int = 512, ngram_range: tuple[int, int] = (3, 5)) -> None:
        dim = int(dim)
        lo, hi = (int(n) for n in ngram_range)
        if dim < 1:
            raise ValueError(f"hashing embedder dim must be >= 1, got {dim}")
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must be (lo, hi) with 1 <= lo <= hi, got {tuple(ngram_range)}")
        self.dim = dim
        self.ngram_range = (lo, hi)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        from sklearn.feature_extraction.text import HashingVectorizer

        texts = [str(t) for t in texts]
        if not texts:
            return torch.empty(0, self.dim)
        vectorizer = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=self.ngram_range,
            n_features=self.dim,
            alternate_sign=True,
            norm=None,
            lowercase=True,
        )
        dense = torch.from_numpy(vectorizer.transform(texts).toarray()).to(torch.float64)
        norms = dense.norm(dim=1)
        if (norms == 0).any():
            bad = [texts[i] for i in torch.nonzero(norms == 0).flatten().tolist()]
            raise ValueError(f"hashing embedder: no character n-grams in {bad[:5]} (empty or cancelled out)")
        return (dense / norms.unsqueeze(1)).to(torch.float32)


def hashing_embeddings(concepts: Sequence[str], dim: int = 512, ngram_range: tuple[int, int] = (3, 5)) -> torch.Tensor:
    """``[K, dim]`` L2-normalised character n-gram hashing embeddings of ``concepts`` (see :class:`HashingEmbedder`)."""
    concepts = list(concepts)
    if not concepts:
        raise ValueError("hashing_embeddings needs at least one concept")
    return HashingEmbedder(dim, ngram_range).embed(concepts)
