"""Models as W&B artifacts, linked to the run that trained them (``logger.wandb.log_model=best|all|false``).

* ``model-<run id>`` (type ``model``): a checkpoint as ``model.ckpt``, with its monitor, score, epoch and step in
  the metadata; aliases ``best`` (the checkpoint the run tested) and ``last`` (``last.ckpt``). ``best`` uploads
  that one checkpoint after testing; ``all`` uploads every checkpoint as it is written (a new version each time
  the file changes).
* ``hf-model-<run id>`` (type ``model``): the best checkpoint exported as a Hugging Face-format folder
  (:meth:`cxr_vlp.inference.CXRModel.save_pretrained`: ``config.json``, ``model.safetensors``, tokenizer,
  ``README.md`` model card, no pickle); the card is also the artifact's description.

Files are copied into W&B's staging area when added (policy ``mutable``), so an offline run keeps them until
``wandb sync``. For credentialed data nothing is uploaded unless ``logger.wandb.allow_credentialed_model_upload``
is set (:meth:`cxr_vlp.tracking.logger.WandbRunLogger.upload_allowed`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["checkpoint_metadata", "log_best_model", "upload_checkpoints"]

log = logging.getLogger(__name__)

_EPOCH_STEP = re.compile(r"epoch=?(?P<epoch>\d+)-step=?(?P<step>\d+)")


def _score(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


def checkpoint_metadata(path: str | Path, callback: Any) -> dict[str, Any]:
    """Metadata of one checkpoint file of a ``ModelCheckpoint``: its monitor, mode and score, and the epoch / step
    read from its name (``epoch003-step120.ckpt``) where the name has them."""
    path = Path(path)
    meta: dict[str, Any] = {
        "file": path.name,
        "monitor": getattr(callback, "monitor", None),
        "mode": getattr(callback, "mode", None),
        "score": _score(getattr(callback, "best_k_models", {}).get(str(path))),
    }
    m = _EPOCH_STEP.search(path.stem)
    if m:
        meta.update(epoch=int(m["epoch"]), step=int(m["step"]))
    return meta


def _aliases(path: Path, callback: Any) -> list[str]:
    aliases = ["latest"]
    if str(path) == str(getattr(callback, "best_model_path", "") or ""):
        aliases.append("best")
    if path.stem == "last" or str(path) == str(getattr(callback, "last_model_path", "") or ""):
        aliases.append("last")
    return aliases


def _log_checkpoint(logger: Any, path: Path, metadata: dict[str, Any], aliases: list[str]) -> None:
    import wandb

    artifact = wandb.Artifact(name=f"model-{logger.experiment.id}", type="model", metadata=metadata)
    artifact.add_file(str(path), name="model.ckpt", policy="mutable")
    logger.experiment.log_artifact(artifact, aliases=aliases)


def upload_checkpoints(logger: Any, callback: Any) -> list[Path]:
    """Upload the checkpoint files of ``callback`` (its kept top-k and its last file) that are new or changed since
    they were last uploaded; returns them."""
    files = [Path(p) for p in getattr(callback, "best_k_models", {})]
    last = getattr(callback, "last_model_path", "") or ""
    if last:
        files.append(Path(last))
    done = []
    for path in dict.fromkeys(files):
        if not path.is_file():
            continue
        mtime = path.stat().st_mtime
        if logger._uploaded.get(str(path)) == mtime:
            continue
        _log_checkpoint(logger, path, checkpoint_metadata(path, callback), _aliases(path, callback))
        logger._uploaded[str(path)] = mtime
        done.append(path)
    return done


def log_best_model(logger: Any, callback: Any, best_path: str | Path) -> list[str]:
    """After testing: the best checkpoint (unless ``all`` already uploaded this version) and its exported folder
    as artifacts of the run; returns the artifact names. A failed export is reported and skipped."""
    path = Path(best_path)
    if not path.is_file():
        log.warning("log_model: no best checkpoint file %s; nothing uploaded", path)
        return []
    run = logger.experiment
    metadata = checkpoint_metadata(path, callback)
    if logger.best is not None and logger.best.value is not None:
        metadata.update(
            {"best_value": logger.best.value, "best_step": logger.best.step, "best_epoch": logger.best.epoch}
        )
    names = [f"model-{run.id}"]
    if logger._uploaded.get(str(path)) != path.stat().st_mtime:
        _log_checkpoint(logger, path, metadata, ["latest", "best"])
        logger._uploaded[str(path)] = path.stat().st_mtime
    try:
        names.append(_log_exported_folder(logger, path, metadata))
    except Exception as err:  # noqa: BLE001 - the checkpoint is uploaded; the folder is a convenience
        log.warning(
            "log_model: exporting %s as a Hugging Face folder failed (%s); only the checkpoint is uploaded", path, err
        )
    return names


def _log_exported_folder(logger: Any, ckpt: Path, metadata: dict[str, Any]) -> str:
    import wandb

    from cxr_vlp.inference import CXRModel

    model = CXRModel.from_checkpoint(ckpt, device="cpu")
    name = f"hf-model-{logger.experiment.id}"
    with tempfile.TemporaryDirectory(prefix="cxr_vlp_export_") as tmp:
        folder = model.save_pretrained(Path(tmp) / "model")
        card = (folder / "README.md").read_text(encoding="utf-8") if (folder / "README.md").is_file() else None
        artifact = wandb.Artifact(
            name=name,
            type="model",
            description=card,
            metadata={
                **metadata,
                "format": "cxr_vlp Hugging Face folder",
                "load": "cxr_vlp.CXRModel.from_pretrained(<downloaded folder>)",
            },
        )
        artifact.add_dir(str(folder), policy="mutable")
        logger.experiment.log_artifact(artifact, aliases=["latest", "best"])
    return name
