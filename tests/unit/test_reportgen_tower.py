"""The frozen image tower as decoder memory: the global slot is the contrastive embedding, the grid is spatial."""

from __future__ import annotations

import pytest
import torch

from cxr_vlp.models.dual_encoder import DualEncoder
from cxr_vlp.models.image_encoder import ImageEncoder
from cxr_vlp.models.text_encoder import TextEncoder
from cxr_vlp.reportgen.tower import FrozenImageTower


def _pair(name: str, **kwargs) -> tuple[DualEncoder, FrozenImageTower]:
    torch.manual_seed(0)
    dual = DualEncoder(
        ImageEncoder(name, **kwargs),
        TextEncoder(
            vocab_size=50,
            local_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        ),
        embed_dim=24,
    )
    tower = FrozenImageTower(ImageEncoder(name, **kwargs), embed_dim=24, grid=True)
    tower.load_from_contrastive({f"encoder.{k}": v for k, v in dual.state_dict().items()})
    return dual.eval(), tower


@pytest.mark.parametrize(
    ("name", "kwargs", "positions"), [("resnet10t", {}, 2 * 2), ("test_vit", {"img_size": 64}, 17)]
)
def test_global_slot_is_the_contrastive_embedding_and_grid_is_spatial(name: str, kwargs: dict, positions: int) -> None:
    dual, tower = _pair(name, **kwargs)
    images = torch.randn(3, 1, 64, 64)
    memory, global_emb = tower(images)
    torch.testing.assert_close(global_emb, dual.encode_image(images).embedding, atol=1e-5, rtol=1e-5)
    assert memory.shape == (3, 1 + positions, 24)
    torch.testing.assert_close(memory[:, 0], global_emb)
    torch.testing.assert_close(memory.norm(dim=-1), torch.ones(3, 1 + positions), atol=1e-5, rtol=1e-5)
    # the grid is spatial: changing one image corner changes some grid slots more than others
    changed = images.clone()
    changed[:, :, :16, :16] += 3.0
    delta = (tower(changed)[0][:, 1:] - memory[:, 1:]).norm(dim=-1)
    assert (delta.max(dim=1).values > 10 * delta.min(dim=1).values.clamp_min(1e-6)).all()


def test_tower_is_frozen_and_stays_in_eval_mode() -> None:
    _, tower = _pair("resnet10t")
    tower.train()
    assert not tower.training and not any(m.training for m in tower.modules())
    assert not any(p.requires_grad for p in tower.parameters())
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    tower(torch.randn(4, 1, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in tower.state_dict().items())  # BatchNorm statistics untouched
    without_grid = FrozenImageTower(ImageEncoder("resnet10t"), embed_dim=24, grid=False)
    assert without_grid(torch.randn(2, 1, 64, 64))[0].shape == (2, 1, 24)


def test_load_refuses_a_checkpoint_without_image_weights() -> None:
    _, tower = _pair("resnet10t")
    with pytest.raises(KeyError, match="contrastive checkpoint"):
        tower.load_from_contrastive({"decoder.weight": torch.zeros(1)})
