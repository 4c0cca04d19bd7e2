"""Cross-attention to condition tokens in the UNet and DiT backbones, and the text conditioner."""

from __future__ import annotations

import pytest
import torch

from pixelforge.condition.text_embed import TextConditioner
from pixelforge.models.nets.dit import DiT
from pixelforge.models.nets.unet import UNet


def _unet(context_dim: int = 0) -> UNet:
    torch.manual_seed(0)
    return UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(4,), num_classes=0, context_dim=context_dim)


def _dit(context_dim: int = 0) -> DiT:
    torch.manual_seed(0)
    return DiT(image_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2, num_heads=4, context_dim=context_dim)


@pytest.mark.parametrize("make", [_unet, _dit], ids=["unet", "dit"])
def test_without_tokens_the_weight_names_are_unchanged(make):
    plain, with_ctx = set(make(0).state_dict()), set(make(16).state_dict())
    assert plain < with_ctx
    assert all("cross" in k for k in with_ctx - plain)


@pytest.mark.parametrize("make", [_unet, _dit], ids=["unet", "dit"])
def test_tokens_steer_the_output_and_masked_tokens_do_not(make, randomize_zero_init):
    net = randomize_zero_init(make(16)).eval()
    x, c_noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0.1, -0.3])
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 4, 16, generator=g)
    mask = torch.tensor([[True, True, False, False]] * 2)
    out = net(x, c_noise, tokens=tokens, token_mask=mask)
    other = tokens.clone()
    other[:, 2:] = torch.randn(2, 2, 16, generator=g)  # only masked positions change
    assert torch.equal(out, net(x, c_noise, tokens=other, token_mask=mask))
    other[:, :2] = torch.randn(2, 2, 16, generator=g)  # now attended positions change too
    assert (out - net(x, c_noise, tokens=other, token_mask=mask)).abs().max() > 1e-4


@pytest.mark.parametrize("make", [_unet, _dit], ids=["unet", "dit"])
def test_a_network_with_cross_attention_needs_tokens(make):
    with pytest.raises(ValueError, match="tokens"):
        make(16)(torch.zeros(1, 3, 8, 8), torch.zeros(1))


def test_fresh_cross_attention_is_the_identity():
    # zero-initialised output projections: adding cross-attention leaves a fresh network's output as it was
    plain, with_ctx = _unet(0).eval(), _unet(16).eval()
    with_ctx.load_state_dict(plain.state_dict(), strict=False)
    x, c_noise = torch.randn(2, 3, 8, 8), torch.tensor([0.1, -0.3])
    tokens, mask = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)
    assert torch.allclose(plain(x, c_noise), with_ctx(x, c_noise, tokens=tokens, token_mask=mask), atol=1e-6)


def test_text_conditioner_maps_the_empty_prompt_to_learned_null_values():
    torch.manual_seed(0)
    cond = TextConditioner(text_dim=6, vector_dim=10, context_dim=8)
    with torch.no_grad():
        cond.null_vector.normal_()
    pooled = torch.nn.functional.normalize(torch.randn(3, 6), dim=1)
    tokens, mask = torch.randn(3, 5, 6), torch.tensor([[True] * 3 + [False] * 2] * 3)
    present = torch.tensor([True, False, True])  # sample 1 has the empty prompt
    vector, out_tokens, out_mask = cond(pooled, tokens, mask, present)
    assert torch.equal(vector[1], cond.null_vector)
    assert not torch.equal(vector[0], cond.null_vector)
    assert out_tokens.shape == (3, 6, 8) and out_mask.shape == (3, 6)
    assert out_mask[:, 0].all()  # the null token leads every sequence
    assert out_mask[1].sum() == 1 and out_mask[0].sum() == 4


def test_placed_queries_let_one_token_say_different_things_at_different_places(randomize_zero_init):
    """With cross_attn_position, equal features at two places attend differently to the same tokens
    (what lets "at the top left" bind to a place); without it, equal features get equal answers."""
    from pixelforge.models.nets.cross_attention import SpatialCrossAttention

    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, 16, 1, 1, generator=g).expand(1, 16, 4, 4).contiguous()  # the same feature everywhere
    tokens, mask = torch.randn(1, 3, 8, generator=g), torch.ones(1, 3, dtype=torch.bool)
    for position in (False, True):
        torch.manual_seed(0)
        attn = randomize_zero_init(SpatialCrossAttention(16, 8, position=position))
        out = attn(h, tokens, mask)  # (1, 16, 4, 4)
        spread = (out - out[:, :, :1, :1]).abs().amax().item()
        assert (spread > 1e-3) == position, (position, spread)


def test_a_text_conditioner_can_give_tokens_only():
    cond = TextConditioner(12, 0, 16)
    pooled, tokens = torch.randn(2, 12), torch.randn(2, 5, 12)
    vector, out_tokens, out_mask = cond(pooled, tokens, torch.ones(2, 5, dtype=torch.bool), torch.tensor([True, False]))
    assert vector is None and out_tokens.shape == (2, 6, 16)
    assert out_mask.tolist() == [[True] * 6, [True] + [False] * 5]
    assert not any("vector" in k for k in cond.state_dict())
    with pytest.raises(ValueError, match="vector .* tokens"):
        TextConditioner(12, 0, 0)


def test_whitening_gives_every_direction_the_captions_vary_in_unit_variance():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([3.0, 1.0, 0.5, 0.3, 1e-4, 1e-4, 1e-4, 1e-4])  # directions the captions vary in; ones they do not
    basis, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    pooled = (torch.randn(4000, 8, generator=g) * scales) @ basis.T + 5.0  # (N, 8), far from the origin
    cond = TextConditioner(8, 16, whiten=True)
    before = cond._whitened(pooled, "pooled")
    assert torch.equal(before, pooled)  # identity until fitted
    cond.fit_statistics(pooled)
    w = cond._whitened(pooled, "pooled")
    assert w.mean(0).abs().max() < 1e-3
    var = torch.linalg.eigvalsh(torch.cov(w.T.double()))  # ascending
    assert var[4:].min() > 0.9 and var.max() < 1.01, var  # 0.3 as strong as 3 after whitening
    assert var[:4].max() < 0.01, var  # directions without variance are damped by the floor, not blown up
    assert {"pooled_mean", "pooled_whiten", "token_mean", "token_whiten"} <= set(cond.state_dict())
    plain = TextConditioner(8, 16)
    assert not any("whiten" in k or "mean" in k for k in plain.state_dict())


def test_with_several_wordings_per_image_the_transform_keeps_what_images_differ_in_and_drops_the_wording():
    """groups given: a direction in which only the wordings of one image differ (even a strong one) is
    shrunk far below one in which the images differ (even a weak one), which ends near unit variance."""
    g = torch.Generator().manual_seed(0)
    images, wordings = 600, 5
    content = torch.randn(images, 2, generator=g) * torch.tensor([0.2, 1.0])  # (K, 2): weak and strong content
    x = torch.zeros(images * wordings, 6, dtype=torch.float32)
    x[:, :2] = content.repeat_interleave(wordings, 0)
    x[:, 2:4] = torch.randn(images * wordings, 2, generator=g) * torch.tensor([2.0, 0.5])  # wording only
    x[:, 0] += torch.randn(images * wordings, generator=g) * 0.01  # a little wording noise on the content too
    x[:, 1] += torch.randn(images * wordings, generator=g) * 0.05
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    pooled = x @ basis.T + 3.0
    groups = torch.arange(images).repeat_interleave(wordings)
    cond = TextConditioner(6, 8, whiten=True)
    cond.fit_statistics(pooled, groups=groups)
    out = cond._whitened(pooled, "pooled").double() @ basis.double()  # back in the axes above
    var = out.var(0)
    assert var[0] > 0.8 and var[1] > 0.8, var  # both content directions near unit variance, the weak one too
    assert var[2] < 0.05 and var[3] < 0.05, var  # the wording's directions shrunk, the strong one too
    plain = TextConditioner(6, 8, whiten=True)
    plain.fit_statistics(pooled)  # whitening alone gives the wording unit variance as well
    assert (plain._whitened(pooled, "pooled").double() @ basis.double()).var(0)[2] > 0.9


def test_attention_pooling_reads_words_wherever_they_stand_and_ignores_padding():
    """text_pool "attention": the vector depends on which token states a prompt has, not on where they
    stand, and padding states (mask False) change nothing."""
    from pixelforge.condition.text_embed import TokenAttentionPool

    torch.manual_seed(0)
    pool = TokenAttentionPool(12, 10)
    tokens, mask = torch.randn(2, 6, 12), torch.tensor([[True] * 4 + [False] * 2] * 2)
    out = pool(tokens, mask)
    moved = tokens.clone()
    moved[:, :4] = tokens[:, [2, 0, 3, 1]]  # the same words in another order
    assert torch.allclose(pool(moved, mask), out, atol=1e-6)
    padded = tokens.clone()
    padded[:, 4:] = 100 * torch.randn(2, 2, 12)
    assert torch.allclose(pool(padded, mask), out, atol=1e-6)
    other = tokens.clone()
    other[:, 1] = torch.randn(2, 12)  # one word changed
    assert (pool(other, mask) - out).abs().amax() > 1e-4
    assert torch.isfinite(pool(tokens, torch.zeros(2, 6, dtype=torch.bool))).all()  # no real token at all


def test_attention_pooling_adds_to_the_vector_and_leaves_the_mean_conditioner_as_it_was():
    torch.manual_seed(0)
    mean = TextConditioner(12, 10, 8, whiten=True)
    torch.manual_seed(0)
    attention = TextConditioner(12, 10, 8, whiten=True, pool="attention")
    shared = {k: v for k, v in attention.state_dict().items() if not k.startswith(("token_pool.", "pool_vector."))}
    assert set(shared) == set(mean.state_dict()) and all(torch.equal(v, mean.state_dict()[k]) for k, v in shared.items())
    pooled, tokens, mask = torch.randn(3, 12), torch.randn(3, 5, 12), torch.ones(3, 5, dtype=torch.bool)
    present = torch.tensor([True, True, False])
    v_mean, v_attention = mean(pooled, tokens, mask, present)[0], attention(pooled, tokens, mask, present)[0]
    pooled_tokens = torch.nn.functional.normalize(attention.token_pool(tokens, mask), dim=-1) * 16  # sqrt(POOL_DIM)
    assert torch.allclose(v_attention[:2] - v_mean[:2], attention.pool_vector(pooled_tokens)[:2], atol=1e-6)
    assert torch.equal(v_attention[2], attention.null_vector)  # an absent prompt is still the null vector
    with pytest.raises(ValueError, match="text_pool"):
        TextConditioner(12, 10, pool="max")
    with pytest.raises(ValueError, match="needs the vector"):
        TextConditioner(12, 0, 8, pool="attention")
