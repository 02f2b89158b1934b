"""Contrastive gradient accumulation with a feature cache (the GradCache idea, Gao et al. 2021).

A contrastive loss over B studies needs all B embeddings at once: its negatives are the other rows of the
batch. Naive gradient accumulation (Lightning's ``accumulate_grad_batches``) averages the losses of k small
batches, each with only B/k − 1 negatives, which is a different (weaker) objective. The feature cache computes
the loss of the full batch while the towers only ever hold the activations of one chunk:

1. encode every chunk without gradients and keep the embeddings (and each chunk's RNG state, so dropout draws
   the same masks again in step 3);
2. compute the loss on the concatenated embeddings (detached leaves) and its gradient with respect to them;
3. encode each chunk again with gradients and back-propagate ``Σ embedding · cached gradient``: by the chain
   rule this is the chunk's share of the full-batch gradient of every tower parameter.

The parameter gradients equal those of one backward pass through the full batch (tests compare them), at the
cost of one extra forward pass of the towers. Two differences remain, both inherent to chunking: BatchNorm
normalises with per-chunk statistics (as it does per GPU under DDP; layer-norm towers are unaffected), and its
running statistics are updated once per chunk (the no-gradient pass restores them, so they are not updated twice).

Under DDP every backward pass but the last runs without gradient synchronisation (``no_sync``); the last one
also back-propagates the loss itself, so the loss head's own parameters (temperature, concept path) get their
gradients and every parameter is reduced exactly once per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ContextManager

import torch
from torch import Tensor, nn

from cxr_vlp.losses.heads import GaussianEmbedding, LossOutput

Views = tuple[list[Any], list[Any]]  # (image views, text views): tensors or GaussianEmbeddings, one per view


def _flatten(views: Views) -> list[Tensor]:
    flat: list[Tensor] = []
    for view in (*views[0], *views[1]):
        flat.extend(view if isinstance(view, GaussianEmbedding) else (view,))
    return flat


def _unflatten(flat: list[Tensor], like: Views) -> Views:
    it = iter(flat)

    def rebuild(view: Any) -> Any:
        return GaussianEmbedding(next(it), next(it)) if isinstance(view, GaussianEmbedding) else next(it)

    return [rebuild(v) for v in like[0]], [rebuild(v) for v in like[1]]


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replayed_rng(state: tuple[Tensor, Tensor | None], device: torch.device) -> Iterator[None]:
    """Run with a saved RNG state; the global state afterwards is what it was before (not advanced twice)."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


@contextlib.contextmanager
def kept_norm_statistics(module: nn.Module | None) -> Iterator[None]:
    """Restore the running statistics of every BatchNorm layer of ``module`` on exit."""
    norms = (
        [
            m
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training
        ]
        if module is not None
        else []
    )
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)


def cached_contrastive_step(
    chunks: Sequence[Any],
    encode: Callable[[Any], Views],
    loss_fn: Callable[[list[Any], list[Any]], LossOutput],
    backward: Callable[[Tensor], None],
    no_sync: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
    norm_module: nn.Module | None = None,
    device: torch.device | None = None,
) -> LossOutput:
    """One full-batch contrastive backward pass, computed chunk by chunk (see the module docstring).

    Args:
        chunks: the batch split into consecutive chunks (e.g. ``Batch.split``); their embeddings are concatenated
            in this order, so ``loss_fn`` sees the rows of the full batch.
        encode: chunk → ``(image views, text views)``; each view a ``[b, D]`` tensor or a
            :class:`GaussianEmbedding`; called twice per chunk (without, then with gradients).
        loss_fn: ``(image views, text views)`` of the full batch → :class:`LossOutput` (labels, concepts and the
            like are the closure's business).
        backward: runs a backward pass (``LightningModule.manual_backward`` or ``Tensor.backward``).
        no_sync: context manager that suspends DDP's gradient reduction (``strategy.block_backward_sync``).
        norm_module: the towers, whose BatchNorm running statistics the no-gradient pass must not update.
        device: where the towers run (for the CUDA RNG state); default: ``norm_module``'s device, else the CPU.
    Returns the loss output of the full batch (detached loss).
    """
    if not chunks:
        raise ValueError("cached_contrastive_step needs at least one chunk")
    if device is None:
        device = next(norm_module.parameters()).device if norm_module is not None else torch.device("cpu")
    states, encoded = [], []
    with torch.no_grad(), kept_norm_statistics(norm_module):
        for chunk in chunks:
            states.append(_rng_state(device))
            encoded.append(encode(chunk))
    sizes = [_flatten(v)[0].shape[0] for v in encoded]
    leaves = [torch.cat(parts).detach().requires_grad_(True) for parts in zip(*(_flatten(v) for v in encoded))]
    out = loss_fn(*_unflatten(leaves, encoded[0]))
    leaf_grads = torch.autograd.grad(out.loss, leaves, retain_graph=True, allow_unused=True)
    per_chunk = [g.split(sizes) if g is not None else [None] * len(sizes) for g in leaf_grads]
    for k, chunk in enumerate(chunks):
        last = k == len(chunks) - 1
        with _replayed_rng(states[k], device):
            flat = _flatten(encode(chunk))
        surrogate = sum(
            (emb * grads[k].to(emb.dtype)).sum() for emb, grads in zip(flat, per_chunk) if grads[k] is not None
        )
        if last:  # the loss graph once more: the head's own parameters, and one synchronised backward
            backward(surrogate + out.loss)
        else:
            with no_sync():
                backward(surrogate)
    return LossOutput(out.loss.detach(), out.logs)
