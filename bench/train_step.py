"""Print the training throughput of the dual encoder + loss head (no data loading) for an experiment.

    python bench/train_step.py [+experiment=demo] [data.batch_size=64] [data.transforms.image_size=112] [steps=10]

Uses the real configs and ContrastiveModule, random images and token ids of the configured shapes, and
AdamW steps; prints samples/s (studies/s; images/s = studies/s x image views). CPU or the first GPU.
"""

from __future__ import annotations

import sys
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cxr_vlp.lit.module import ContrastiveModule
from cxr_vlp.utils.config import config_dir


def main(argv: list[str]) -> None:
    steps = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("steps=")), 10)
    overrides = [a for a in argv if not a.startswith("steps=")] or ["+experiment=demo"]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    c = OmegaConf.to_container(cfg, resolve=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = ContrastiveModule(model=OmegaConf.to_container(cfg.model, resolve=True), loss=c["loss"],
                               optim=c["optim"], scheduler=c["scheduler"]).to(device)
    b, size = cfg.data.batch_size, cfg.data.transforms.image_size
    vi, vt, length = cfg.data.num_image_views, cfg.data.text_views.num_views, 80
    vocab = cfg.model.text_encoder.tokenizer.vocab_size
    images = torch.randn(b * vi, 1, size, size, device=device)
    ids = torch.randint(5, vocab, (b * vt, length), device=device)
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    precision = torch.bfloat16 if cfg.trainer.precision == "bf16-mixed" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
            img = module.encoder.encode_image(images).embedding.view(b, vi, -1).unbind(1)
            txt = module.encoder.encode_text(ids, mask).embedding.view(b, vt, -1).unbind(1)
            loss = module.loss_head(list(img), list(txt)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    print(f"device={device} threads={torch.get_num_threads()} batch={b} image={size}px views={vi}+{vt} "
          f"precision={cfg.trainer.precision}")
    print(f"train step: {1000 * seconds:.1f} ms  ->  {b / seconds:.1f} studies/s, {b * vi / seconds:.1f} images/s")


if __name__ == "__main__":
    main(sys.argv[1:])
