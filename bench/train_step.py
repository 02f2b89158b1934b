"""Training step time of each loss head at the same towers and batch, as a ratio to CLIP (no data loading).

    python bench/train_step.py [+experiment=demo] [data.batch_size=64] [data.transforms.image_size=112] [steps=10]
    python bench/train_step.py heads=clip,mcsl          # a subset of clip, mcsl, probclip_vib, clear

Each head gets the given experiment's towers and batch (2 image + 2 text views, as the multi-view heads train),
with the head's own settings from conf/loss/: ProbCLIP-VIB adds the log-variance heads it needs
(``model.probabilistic=true``); CLEAR encodes its concepts with the text tower every step (offline hashing E,
WordPiece tokenizer trained on the concept names). Random images and token ids of the configured shapes, AdamW
steps through ContrastiveModule's own training loss. The heads' steps are interleaved (one step of each head per
round) so load on a shared machine hits all of them alike; prints the median step time per head, studies/s and
the ratio to CLIP. On a CUDA device the default is the paper-size towers of ``+experiment=clip_mimic`` (no
pretrained download) in bf16 autocast; CPU otherwise.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cxr_vlp.data.batch import Batch
from cxr_vlp.lit.module import ContrastiveModule
from cxr_vlp.utils.config import config_dir

HEADS: dict[str, list[str]] = {
    "clip": ["loss=clip"],
    "mcsl": ["loss=mcsl"],
    "probclip_vib": ["loss=probclip_vib", "model.probabilistic=true"],
    "clear": ["loss=clear", "loss.embedder.kind=hashing", "loss.embedder.cache_dir=null", "loss.bank=null"],
}
CUDA_BASE = ["+experiment=clip_mimic", "model.image_encoder.pretrained=false", "trainer.precision=bf16-mixed"]


def _module(overrides: list[str], device: torch.device) -> tuple[ContrastiveModule, dict]:
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    c = OmegaConf.to_container(cfg, resolve=False)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if model["text_encoder"].get("name_or_path") is not None:
        model["text_encoder"]["pretrained"] = False
    torch.manual_seed(0)
    module = ContrastiveModule(model=model, loss=c["loss"], optim=c["optim"], scheduler=c["scheduler"]).to(device)
    tok = cfg.model.text_encoder.tokenizer
    if module.loss_head.concept_names:  # concept heads tokenise their concepts with the run's tokenizer
        from cxr_vlp.data.tokenizer import build_tokenizer, train_wordpiece

        names = list(module.loss_head.concept_names)
        tokenizer = (
            train_wordpiece(names * 3, vocab_size=int(tok.vocab_size), min_frequency=1)
            if tok.kind == "wordpiece"
            else build_tokenizer(**OmegaConf.to_container(tok))
        )
        module.prepare_head(tokenizer)
        module.to(device)
    shape = {
        "b": int(cfg.data.batch_size),
        "size": int(cfg.data.transforms.image_size),
        "vocab": int(tok.get("vocab_size") or 1000),
        "precision": str(cfg.trainer.precision),
    }
    return module, shape


def _step_fn(module: ContrastiveModule, batch: Batch, precision: str, device: torch.device) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = module._head_loss(*module._loss_views(batch), labels=batch.labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _batch(b: int, size: int, vocab: int, device: torch.device, views: int = 2, length: int = 80) -> Batch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (b, views, length), generator=g)
    labels = (torch.rand(b, 14, generator=g) > 0.7).float()
    return Batch(
        images=torch.randn(b, views, 1, size, size, generator=g),
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=labels,
        index=torch.arange(b),
        study_ids=[str(i) for i in range(b)],
        subject_ids=[str(i) for i in range(b)],
        texts=[["findings", "impression"]] * b,
    ).to(device)


def main(argv: list[str]) -> None:
    steps = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("steps=")), 10)
    heads = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("heads=")), list(HEADS))
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise SystemExit(f"unknown heads {unknown}; known: {', '.join(HEADS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = [a for a in argv if not a.startswith(("steps=", "heads="))]
    if not any(a.startswith("+experiment=") for a in base):
        base = (CUDA_BASE if device.type == "cuda" else ["+experiment=demo"]) + base
    base += ["data.num_image_views=2", "data.text_views.num_views=2"]
    steps_of, shape = {}, {}
    for head in heads:
        module, shape = _module([*base, *HEADS[head]], device)
        batch = _batch(shape["b"], shape["size"], shape["vocab"], device)
        steps_of[head] = _step_fn(module, batch, shape["precision"], device)
    times: dict[str, list[float]] = {h: [] for h in heads}
    for r in range(steps + 2):  # two warm-up rounds
        for head in heads:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps_of[head]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= 2:
                times[head].append(time.perf_counter() - start)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={shape['b']} image={shape['size']}px views=2+2 "
        f"precision={shape['precision']} steps={steps} (median per head, heads interleaved)"
    )
    ref = statistics.median(times["clip"]) if "clip" in times else None
    for head in heads:
        sec = statistics.median(times[head])
        ratio = f"{sec / ref:5.2f}x CLIP" if ref else ""
        print(f"{head:>13}: {1000 * sec:8.1f} ms/step  {shape['b'] / sec:8.1f} studies/s  {ratio}")


if __name__ == "__main__":
    main(sys.argv[1:])
