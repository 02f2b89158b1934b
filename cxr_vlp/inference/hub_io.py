"""An exported model folder in the Hugging Face layout, with no pickle anywhere in it.

``config.json`` (format, kind, hyper-parameters, preprocessing, training-data name and access class, concepts,
zero-shot thresholds, test metrics, split fingerprint, and the sha256 of the weight and tokenizer files),
``model.safetensors`` (the state dict), the tokenizer (``tokenizer.json`` and its ``tokenizer_config.json`` /
``special_tokens_map.json``) and the model card ``README.md``.

:func:`load_folder` refuses a folder holding a pickle-format file (by suffix or by content), a ``config.json`` whose
``_target_`` names anything outside ``cxr_vlp``, or weights / tokenizer whose sha256 differs from ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

import cxr_vlp
from cxr_vlp.checkpoint import KINDS, CXRPayload
from cxr_vlp.inference.payload import Payload

FORMAT = "cxr_vlp"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
CARD_NAME = "README.md"
# file types that hold (or may hold) Python pickles: never part of an exported folder
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".dill")
TARGET_PREFIX = "cxr_vlp."

__all__ = ["FolderRefused", "exported_hparams", "load_folder", "save_folder", "sha256_file"]


class FolderRefused(ValueError):
    """An exported model folder that is not safe or not intact to load."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _targets(node: Any, where: str = "hyper_parameters") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield where, value
            else:
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def _is_pickle(path: Path) -> bool:
    """Pickle protocol 2+ (``\\x80`` + protocol byte) or a torch zip archive (``PK\\x03\\x04``, holds a pickle)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head == b"PK\x03\x04"


def _state_for_safetensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous, unshared CPU copies (safetensors refuses tensors that share memory, e.g. tied weights)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def exported_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters as ``config.json`` stores them: the run's data config without its paths (the data root,
    caches) and no training output folder; the model, loss and optimiser nodes unchanged."""
    from cxr_vlp.inference.card import scrub_paths

    out = dict(hparams)
    if isinstance(out.get("data"), dict):
        out["data"] = scrub_paths(out["data"])
    if "output_dir" in out:
        out["output_dir"] = None
    return out


def save_folder(payload: Payload, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, card_text: str) -> Path:
    """Write ``payload`` (with the module's ``tokenizer``) as an exported folder (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in out.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if stale:
        raise FolderRefused(f"{out} already holds pickle-format file(s) {stale}: export into an empty folder")
    weights = out / WEIGHTS_NAME
    save_file(_state_for_safetensors(payload.state_dict), str(weights), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cxr_vlp_version": cxr_vlp.__version__,
        "kind": payload.kind,
        "hyper_parameters": exported_hparams(payload.hparams),
        "preprocessing": payload.preprocessing,
        "training_data": payload.training_data,
        "concepts": payload.concepts,
        "zeroshot_thresholds": payload.thresholds,
        "metrics": payload.metrics,
        "split_fingerprint": payload.split_fingerprint,
        "files": {WEIGHTS_NAME: sha256_file(weights), TOKENIZER_NAME: sha256_file(out / TOKENIZER_NAME)},
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=1, sort_keys=False, default=str) + "\n")
    (out / CARD_NAME).write_text(card_text)
    return out


def _check_folder(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` once the folder passes every check of the module docstring."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in PICKLE_SUFFIXES or _is_pickle(path):
            raise FolderRefused(
                f"{path}: a pickle-format file in the model folder; cxr_vlp folders hold only "
                f"{WEIGHTS_NAME} and JSON / text files, and a pickle can run code when loaded. "
                "Remove the file (or re-export with `python -m cxr_vlp.export`)"
            )
    for name in (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME):
        if not (folder / name).is_file():
            raise FolderRefused(
                f"{folder}: no {name}; not a cxr_vlp model folder (export one with "
                "`python -m cxr_vlp.export ckpt_path=... out_dir=...`)"
            )
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as err:
        raise FolderRefused(f"{folder / CONFIG_NAME}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise FolderRefused(f"{folder / CONFIG_NAME}: key 'format' must be {FORMAT!r}: not a cxr_vlp model folder")
    if config.get("format_version") != FORMAT_VERSION:
        raise FolderRefused(
            f"{folder / CONFIG_NAME}: format_version {config.get('format_version')!r} is not "
            f"supported by cxr_vlp {cxr_vlp.__version__} (reads version {FORMAT_VERSION})"
        )
    if config.get("kind") not in KINDS:
        raise FolderRefused(f"{folder / CONFIG_NAME}: key 'kind' is {config.get('kind')!r}, expected one of {KINDS}")
    for key in ("hyper_parameters", "preprocessing", "files"):
        if not isinstance(config.get(key), dict):
            raise FolderRefused(f"{folder / CONFIG_NAME}: key {key!r} is missing or not a mapping")
    for where, target in _targets(config["hyper_parameters"]):
        if not isinstance(target, str) or not target.startswith(TARGET_PREFIX):
            raise FolderRefused(
                f"{folder / CONFIG_NAME}: {where}._target_ = {target!r} is outside {TARGET_PREFIX}*; "
                "a model folder may only build cxr_vlp classes (the config was altered)"
            )
    for name in (WEIGHTS_NAME, TOKENIZER_NAME):
        expected = config["files"].get(name)
        actual = sha256_file(folder / name)
        if expected != actual:
            raise FolderRefused(
                f"{folder / name}: sha256 {actual} differs from {expected!r} in {CONFIG_NAME} "
                f"(files.{name}): the file was changed or the config does not belong to it"
            )
    return config


def load_folder(folder: str | Path) -> Payload:
    """A :class:`Payload` from an exported folder, after the checks of the module docstring."""
    folder = Path(folder)
    config = _check_folder(folder)
    thresholds = {str(k): float(v) for k, v in (config.get("zeroshot_thresholds") or {}).items()}
    metrics = {str(k): float(v) for k, v in (config.get("metrics") or {}).items()}
    hparams = config["hyper_parameters"]
    record = CXRPayload(
        kind=config["kind"],
        hparams=hparams,
        tokenizer_json=(folder / TOKENIZER_NAME).read_text(),
        data=hparams.get("data"),
        concepts=config.get("concepts"),
        thresholds=thresholds or None,
        metrics=metrics or None,
        package_version=str(config.get("cxr_vlp_version", "")),
    )
    return Payload(
        record=record,
        state_dict=load_file(str(folder / WEIGHTS_NAME)),
        preprocessing=config["preprocessing"],
        training_data=config.get("training_data") or {},
        thresholds=thresholds,
        metrics=metrics,
        split_fingerprint=config.get("split_fingerprint"),
    )
