"""The label embedding's own learning rate (DiffusionConfig.label_lr_scale): its param group, what a run's steps do
with it, and the checks of the field."""

from __future__ import annotations

import pytest
import torch

from pixelforge.condition import Cond, LabelEmbedding
from pixelforge.models.optim import OptimConfig


def _model(scale: float, seed: int = 0):
    from pixelforge.models import get_family

    family = get_family("diffusion")
    torch.manual_seed(seed)
    model = family(family.Config(num_classes=3, image_size=8, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                                 label_lr_scale=scale))
    model.optim_config = OptimConfig(lr=1e-3, warmup_steps=0)
    return model


def test_one_step_moves_the_label_embedding_ten_times_as_far_and_the_rest_alike(randomize_zero_init):
    plain, fast = randomize_zero_init(_model(1.0)), _model(10.0)  # no zero layer: every weight has a gradient
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    cond = Cond(labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    for model in (plain, fast):
        model.training_step(x, cond, 0)
    moved = {name: {k: (m.state_dict()[k] - before[k]).abs() for k in before} for name, m in (("plain", plain), ("fast", fast))}
    (key,) = [k for k in before if k.endswith("label_embed.embed.weight")]
    # Adam's first step moves each weight with a gradient by the rate (up to eps): the embedding's rows by 10x
    assert moved["plain"][key][:3].max() == pytest.approx(1e-3, rel=1e-3)
    assert moved["fast"][key][:3].max() == pytest.approx(1e-2, rel=1e-3)
    other = [k for k in before if k != key and moved["plain"][k].max() > 0]
    assert other and all(torch.allclose(moved["fast"][k], moved["plain"][k], atol=1e-6) for k in other)


def test_the_optimiser_puts_the_label_embedding_in_a_group_of_its_own():
    from pixelforge.models import get_family

    family = get_family("diffusion")
    model = family(family.Config(num_classes=3, image_size=8, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                                 label_lr_scale=10))
    (opt,) = model.optimizers().values()
    embed = {id(p) for m in model.modules() if isinstance(m, LabelEmbedding) for p in m.parameters()}
    rest, labels = opt.param_groups
    assert {id(p) for p in labels["params"]} == embed and not embed & {id(p) for p in rest["params"]}
    assert labels["lr_scale"] == 10 and "lr_scale" not in rest
    assert len(rest["params"]) + len(labels["params"]) == len(list(model.parameters()))
    plain = family(family.Config(num_classes=3, image_size=8, base_channels=8, channel_mult=(1,), num_res_blocks=1))
    assert len(next(iter(plain.optimizers().values())).param_groups) == 1  # the default: one group, as before


@pytest.mark.parametrize("bad", [0, -1, 1001])
def test_a_label_lr_scale_out_of_range_is_refused_naming_it(bad):
    from pixelforge.models import get_family

    family = get_family("diffusion")
    with pytest.raises(ValueError, match="label_lr_scale"):
        family.Config(num_classes=3, label_lr_scale=bad)
