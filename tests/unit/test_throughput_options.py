"""Throughput options change speed and memory, never the function: same outputs and gradients, same state-dict keys."""

from __future__ import annotations

import pytest
import torch

from cxr_vlp.models.image_encoder import ImageEncoder
from cxr_vlp.models.text_encoder import TextEncoder


def _image_grads(enc: ImageEncoder, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    enc.zero_grad(set_to_none=True)
    out = enc(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in enc.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "option", [{"channels_last": True}, {"gradient_checkpointing": True}, {"compile": {"backend": "eager"}}]
)
def test_image_encoder_options_keep_the_function(option: dict) -> None:
    torch.manual_seed(0)
    plain = ImageEncoder("resnet10t", in_chans=1).eval()
    torch.manual_seed(0)
    fast = ImageEncoder("resnet10t", in_chans=1, **option).eval()
    assert list(fast.state_dict()) == list(plain.state_dict())  # checkpoints interchangeable
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 64, 64)
    out_a, grads_a = _image_grads(plain, x)
    out_b, grads_b = _image_grads(fast, x)
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-5)
    if option.get("channels_last"):
        assert fast.model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_text_encoder_compile_keeps_keys_and_outputs() -> None:
    kw = {
        "vocab_size": 50,
        "local_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
    }
    torch.manual_seed(0)
    plain = TextEncoder(**kw).eval()
    fast = TextEncoder(**kw, compile={"backend": "eager"}).eval()
    fast.load_state_dict(plain.state_dict())
    assert list(fast.state_dict()) == list(plain.state_dict())
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(fast(ids, mask), plain(ids, mask))
