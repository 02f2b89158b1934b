"""Export a trained model: ``python -m cxr_vlp.export ckpt_path=<file.ckpt> out_dir=<folder> [push_to_hub=<repo_id>]``.

Writes the Hugging Face-format folder of :meth:`cxr_vlp.inference.CXRModel.save_pretrained` (``config.json``,
``model.safetensors``, the tokenizer, the ``README.md`` model card; no pickle), loads it back to check that it
embeds exactly as the checkpoint does, and with ``push_to_hub=<user>/<name>`` uploads it (``private=true`` for a
private repository; the token comes from ``hf auth login`` / ``HF_TOKEN``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch

from cxr_vlp.utils.cli import parse_key_values

log = logging.getLogger(__name__)

TYPES = {"ckpt_path": str, "out_dir": str, "push_to_hub": str, "private": bool, "check": bool}
DEFAULTS = {"push_to_hub": None, "private": False, "check": True}


def parse_args(argv: list[str]) -> dict:
    return parse_key_values(argv, TYPES, DEFAULTS, required=("ckpt_path", "out_dir"), doc=__doc__ or "")


def round_trip_check(model, folder: Path) -> float:
    """Largest absolute difference between the checkpoint's and the folder's embeddings of a probe image and text
    (0.0 when they are bit-identical); ``RuntimeError`` when they differ."""
    from cxr_vlp.inference import CXRModel

    loaded = CXRModel.from_pretrained(folder)
    size = int(model.transform_config.image_size)
    probe = (np.add.outer(np.arange(size + 7), np.arange(size + 3)) % 256).astype(np.uint8)
    if model.kind != "contrastive":
        a, b = model.preprocess([probe]), loaded.preprocess([probe])
        same = torch.equal(a, b) and all(
            torch.equal(x, y) for x, y in zip(model.module.state_dict().values(), loaded.module.state_dict().values())
        )
        if not same:
            raise RuntimeError(f"{folder}: the exported weights or preprocessing differ from the checkpoint's")
        return 0.0
    diff = max(
        float((model.encode_images([probe]) - loaded.encode_images([probe])).abs().max()),
        float((model.encode_texts(["no acute findings"]) - loaded.encode_texts(["no acute findings"])).abs().max()),
    )
    if diff != 0.0:
        raise RuntimeError(f"{folder}: embeddings differ from the checkpoint's by up to {diff:g}")
    return diff


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from cxr_vlp.inference import CXRModel

    try:
        model = CXRModel.from_checkpoint(args["ckpt_path"])
        folder = model.save_pretrained(args["out_dir"], repo_id=args["push_to_hub"])
        if args["check"]:
            round_trip_check(model, folder)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    files = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
    print(f"exported {args['ckpt_path']} ({model.kind}, {model.head_name}) -> {folder}: {files}")
    if args["check"]:
        print("round trip: the folder embeds bit-identically to the checkpoint")
    if args["push_to_hub"]:
        info = model.push_to_hub(args["push_to_hub"], private=args["private"])
        print(f"uploaded to https://huggingface.co/{args['push_to_hub']} ({getattr(info, 'oid', info)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
