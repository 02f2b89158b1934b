"""Report for one chest X-ray: ``python -m cxr_vlp.generate ckpt_path=<reportgen .ckpt> image=<file>``.

Loads a report-generation checkpoint (``+experiment=reportgen_*``) as a :class:`~cxr_vlp.inference.CXRModel` (the
image is preprocessed by the evaluation pipeline of the run's data config: grayscale, shorter side resized, centre
crop, normalised) and prints the concept prompt the classifier wrote and the generated report.
``image=[a.jpg,b.jpg]`` reports on several.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from cxr_vlp.utils.config import config_dir

log = logging.getLogger(__name__)


def generate_reports(
    ckpt_path: str,
    images: list[str],
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    device: str = "auto",
) -> list[tuple[str | None, str]]:
    """``(prompt, report)`` per image file (prompt None when the model was trained without concept prompts), through
    :meth:`CXRModel.generate_report <cxr_vlp.inference.CXRModel.generate_report>`."""
    from cxr_vlp.inference import CXRModel

    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    model = CXRModel.from_checkpoint(ckpt_path, device=device)
    if model.kind != "reportgen":
        raise ValueError(
            f"{ckpt_path} is not a report-generation checkpoint (train one with "
            "`python -m cxr_vlp.train +experiment=reportgen_demo pretrained_ckpt=...`)"
        )
    return [(r.prompt, r.report) for r in model.generate_report(images, num_beams, max_new_tokens)]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="generate")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    images = [str(p) for p in cfg.image] if isinstance(cfg.image, ListConfig) else [str(cfg.image)]
    results = generate_reports(cfg.ckpt_path, images, cfg.get("num_beams"), cfg.get("max_new_tokens"), cfg.device)
    for path, (prompt, report) in zip(images, results):
        print(f"== {path}")
        if prompt is not None:
            print(prompt)
        print(report, flush=True)


if __name__ == "__main__":
    main()
