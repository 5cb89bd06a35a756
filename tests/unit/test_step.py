"""The D and G updates of one training step with the contrastive term (loss.contrastive)."""

from __future__ import annotations

import copy

import pytest
import torch

from stackgan.config import LossConfig, ModelConfig
from stackgan.losses import contrastive_loss
from stackgan.networks import build_networks
from stackgan.training.step import StepContext, d_update, g_loss_terms

TINY = {"gf_dim": 16, "df_dim": 8, "cond_dim": 16, "d_text_dim": 16, "text_dim": 32, "z_dim": 8}


def _setup(projection: bool = True):
    torch.manual_seed(0)
    model = ModelConfig(arch="paper", d_projection=projection, **TINY)
    _, D = build_networks(model, 1)
    real, fake = torch.randn(6, 3, 64, 64), torch.randn(6, 3, 64, 64)
    cond = torch.randn(6, 32)
    ids = torch.tensor([1, 1, 2, 3, 4, 5])
    return model, D, real, fake, cond, cond.roll(1, 0), ids


def test_projection_d_exposes_the_pair_scores_of_its_projection_term():
    _, D, real, _, cond, _, _ = _setup()
    D.eval()
    out = D(real, cond)
    feats = D.encode(real)
    torch.testing.assert_close(out.pooled, feats.mean((2, 3)))
    # the diagonal of pooled @ cond_proj.T is the projection term inside the logit
    head = D.cond_head
    plain = copy.deepcopy(D)
    plain.cond_head.projection = None
    term = (out.pooled @ out.cond_proj.t()).diagonal()
    torch.testing.assert_close(out.logits, plain(real, cond).logits + term)
    assert head.projection is not None
    _, D0 = build_networks(ModelConfig(arch="paper", **TINY), 1)
    assert D0(real, cond).pooled is None


@pytest.mark.parametrize("joint", [True, False])
def test_d_update_adds_the_weighted_contrastive_term_on_real_images(joint):
    model, D, real, fake, cond, wrong, ids = _setup()
    D.eval()  # BatchNorm in eval mode: both calls see the same features
    losses = {}
    for w in (0.0, 2.0):
        ctx = StepContext(model=model, loss=LossConfig(contrastive=w), joint=joint)
        loss, parts = d_update(D, ctx, real, fake, cond, wrong, lambda x: x.backward(), ids)
        losses[w] = (loss, parts)
        D.zero_grad()
    out = D(real, cond)
    want = contrastive_loss(out.pooled, out.cond_proj, ids)
    assert "contrastive_d" not in losses[0.0][1]
    torch.testing.assert_close(losses[2.0][1]["contrastive_d"], want.detach())
    torch.testing.assert_close(losses[2.0][0], losses[0.0][0] + 2.0 * want.detach())


@pytest.mark.parametrize("joint", [True, False])
def test_g_loss_adds_the_contrastive_term_on_the_fakes(joint):
    model, D, real, fake, cond, wrong, ids = _setup()
    D.eval()
    fake.requires_grad_(True)
    mu, logvar = torch.zeros(6, 16), torch.zeros(6, 16)
    ctx0 = StepContext(model=model, loss=LossConfig(contrastive=0.0), joint=joint)
    ctx1 = StepContext(model=model, loss=LossConfig(contrastive=0.5), joint=joint)
    args = (D, real, fake, cond, mu, logvar, None, wrong, ids)
    base, _ = g_loss_terms(args[0], ctx0, *args[1:])
    loss, parts = g_loss_terms(args[0], ctx1, *args[1:])
    out = D(fake, cond)
    want = contrastive_loss(out.pooled, out.cond_proj, ids)
    torch.testing.assert_close(parts["contrastive_g"], want)
    torch.testing.assert_close(loss, base + 0.5 * want)
    loss.backward()
    assert fake.grad is not None and bool(fake.grad.abs().sum() > 0)


def test_contrastive_without_projection_is_an_error():
    model, D, real, fake, cond, wrong, ids = _setup(projection=False)
    ctx = StepContext(model=model, loss=LossConfig(contrastive=1.0), joint=True)
    with pytest.raises(ValueError, match="d_projection"):
        d_update(D, ctx, real, fake, cond, wrong, lambda x: x.backward(), ids)


@pytest.mark.parametrize("joint", [True, False])
def test_d_and_g_see_every_image_through_the_augmentation(joint):
    """With an augmentation in the context, both updates score exactly what D would score
    on the augmented images, and G's gradient flows through it."""
    model, D, real, fake, cond, wrong, ids = _setup()
    D.eval()
    flip = lambda x: x.flip(-1)  # noqa: E731 - a deterministic stand-in augmentation
    plain = StepContext(model=model, loss=LossConfig(), joint=joint)
    augmented = StepContext(model=model, loss=LossConfig(), joint=joint, augment=flip)
    loss_aug, _ = d_update(D, augmented, real, fake, cond, wrong, lambda x: None, ids)
    loss_ref, _ = d_update(D, plain, flip(real), flip(fake), cond, wrong, lambda x: None, ids)
    loss_raw, _ = d_update(D, plain, real, fake, cond, wrong, lambda x: None, ids)
    torch.testing.assert_close(loss_aug, loss_ref)
    assert not torch.allclose(loss_aug, loss_raw)
    mu, logvar = torch.zeros(6, 16), torch.zeros(6, 16)
    fake.requires_grad_(True)
    g_aug, _ = g_loss_terms(D, augmented, real, fake, cond, mu, logvar, None, wrong, ids)
    g_ref, _ = g_loss_terms(D, plain, flip(real), flip(fake), cond, mu, logvar, None, wrong, ids)
    torch.testing.assert_close(g_aug, g_ref)
    g_aug.backward()
    assert fake.grad is not None and bool(fake.grad.abs().sum() > 0)


def test_interpolated_captions_mix_the_last_rows_with_their_next_row():
    from stackgan.losses import interpolated_captions

    emb = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3) ** 2
    same, k0 = interpolated_captions(emb, 0.0)
    assert k0 == 0 and same is emb
    mixed, k = interpolated_captions(emb, 0.5)
    assert k == 4 and mixed.shape == emb.shape
    torch.testing.assert_close(mixed[:4], emb[:4])  # mode-seeking / contrastive rows untouched
    for i in range(4, 8):  # midpoint with the next row, the last row with the first
        torch.testing.assert_close(mixed[i], 0.5 * (emb[i] + emb[(i + 1) % 8]))
    assert interpolated_captions(emb, 0.25)[1] == 2
    assert interpolated_captions(emb[:1], 0.5)[1] == 0  # round(0.5) = 0: nothing to mix


class _Recorder(torch.nn.Module):
    """D, recording the conditions of every call."""

    def __init__(self, D: torch.nn.Module) -> None:
        super().__init__()
        self.D, self.conds = D, []

    def forward(self, img, cond, wrong=None, **kw):
        self.conds.append(cond.detach().clone())
        return self.D(img, cond, wrong, **kw)


@pytest.mark.parametrize("joint", [True, False])
def test_g_loss_with_caption_midpoints(joint):
    """GAN-INT rows: the fakes are scored against their (mixed) captions, the real rows of a
    joint batch keep their own conditions, and the contrastive term leaves the mixed rows out."""
    from stackgan.losses import g_loss

    model, D, real, fake, cond, wrong, ids = _setup()
    D.eval()
    mixed_cond = cond.clone()
    mixed_cond[4:] = 0.5 * (cond[4:] + cond.roll(-1, 0)[4:])
    mu, logvar = torch.zeros(6, 16), torch.zeros(6, 16)
    rec = _Recorder(D)
    ctx = StepContext(model=model, loss=LossConfig(contrastive=0.5, kl_weight=0.0), joint=joint)
    loss, parts = g_loss_terms(
        rec, ctx, real, fake, mixed_cond, mu, logvar, None, wrong, ids,
        real_cond=cond, mixed_rows=2,
    )  # fmt: skip
    seen = rec.conds[0]
    if joint:
        torch.testing.assert_close(seen, torch.cat([cond, mixed_cond]))
    else:
        torch.testing.assert_close(seen, mixed_cond)
    out = D(fake, mixed_cond)
    torch.testing.assert_close(parts["loss_g_adv"], g_loss(out.logits))
    want = contrastive_loss(out.pooled[:4], out.cond_proj[:4], ids[:4])
    torch.testing.assert_close(parts["contrastive_g"], want)
    torch.testing.assert_close(loss, g_loss(out.logits) + 0.5 * want)


@pytest.mark.parametrize("arch", ["paper", "pytorch"])
@pytest.mark.parametrize("stage", [1, 2])
def test_projection_only_d_reads_the_text_through_the_projection_term_alone(arch, stage):
    """model.d_projection_only: the logit minus the projection term is the same for any
    condition, and the projection term is the only place the condition enters."""
    torch.manual_seed(0)
    dims = {**TINY, "d_text_dim": TINY["cond_dim"]}
    model = ModelConfig(arch=arch, d_projection=True, d_projection_only=True, **dims)
    _, D = build_networks(model, stage)
    D.eval()
    side = 64 if stage == 1 else 256
    img = torch.randn(3, 3, side, side)
    cond_dim = TINY["text_dim"] if arch == "paper" else TINY["cond_dim"]
    rest = []
    for _ in range(2):
        out = D(img, torch.randn(3, cond_dim))
        rest.append(out.logits - (out.pooled * out.cond_proj).sum(dim=1))
    torch.testing.assert_close(rest[0], rest[1])
    assert D.cond_head.text_fc is None
    # with the concatenated code (the default) the remainder does depend on the condition
    _, D_cat = build_networks(ModelConfig(arch=arch, d_projection=True, **dims), stage)
    D_cat.eval()
    outs = [D_cat(img, torch.randn(3, cond_dim)) for _ in range(2)]
    rests = [o.logits - (o.pooled * o.cond_proj).sum(dim=1) for o in outs]
    assert not torch.allclose(rests[0], rests[1])


def test_projection_only_needs_the_projection_term():
    from stackgan.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.d_projection_only.*d_projection"):
        ModelConfig(d_projection_only=True)


@pytest.mark.parametrize("joint", [True, False])
def test_d_update_adds_the_r1_penalty_of_the_real_pairs_and_trains_d_on_it(joint):
    model, D, real, fake, cond, wrong, ids = _setup()
    D.eval()  # BatchNorm in eval mode: each row's logit depends on its own image only
    grads, results = {}, {}
    for gamma in (0.0, 4.0):
        ctx = StepContext(model=model, loss=LossConfig(r1_gamma=gamma), joint=joint)
        results[gamma] = d_update(D, ctx, real, fake, cond, wrong, lambda x: x.backward(), ids)
        grads[gamma] = [p.grad.clone() for p in D.parameters() if p.grad is not None]
        D.zero_grad()
    # independent recomputation: per-row input gradients of D's matching logits
    x = real.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(D(x, cond).logits.sum(), x, create_graph=True)
    penalty = gx.square().flatten(1).sum(1).mean()
    assert "r1" not in results[0.0][1]
    torch.testing.assert_close(results[4.0][1]["r1"], penalty.detach())
    torch.testing.assert_close(results[4.0][0], results[0.0][0] + 2.0 * penalty.detach())
    # D's gradient gains exactly that of 2 x the penalty
    params = [p for p in D.parameters() if p.requires_grad]
    want = torch.autograd.grad(2.0 * penalty, params, allow_unused=True)
    extra = [g4 - g0 for g4, g0 in zip(grads[4.0], grads[0.0], strict=True)]
    for got, w in zip(extra, [w for w in want if w is not None], strict=True):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-6)
    assert any(bool(e.abs().sum() > 0) for e in extra)


def test_g_loss_adds_the_frozen_stage1_critic_on_the_fakes_read_back_to_64_px():
    """loss.stage1_critic: + weight x the non-saturating loss of the Stage-I D on the Stage-II
    fakes reduced to the Stage-I size (antialiased bilinear), with their captions; the
    gradient reaches the fakes through the critic; no critic, no term."""
    import torch.nn.functional as F

    from stackgan.losses import g_loss

    torch.manual_seed(0)
    model = ModelConfig(arch="paper", **TINY)
    _, D2 = build_networks(model, 2)
    _, critic = build_networks(model, 1)
    D2.eval(), critic.eval().requires_grad_(False)
    real = torch.randn(4, 3, 256, 256)
    low = torch.randn(4, 3, 64, 64)
    emb, mu, logvar = torch.randn(4, 32), torch.zeros(4, 16), torch.zeros(4, 16)
    grads, losses = {}, {}
    for name, weight, crit in [("off", 0.0, critic), ("none", 2.0, None), ("on", 2.0, critic)]:
        fake = torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(1))
        fake.requires_grad_(True)
        ctx = StepContext(model=model, loss=LossConfig(stage1_critic=weight), critic=crit)
        loss, parts = g_loss_terms(D2, ctx, real, fake, emb, mu, logvar, low, None)
        loss.backward()
        losses[name], grads[name] = (loss.detach(), parts), fake.grad.clone()
    assert "stage1_critic" not in losses["off"][1] and "stage1_critic" not in losses["none"][1]
    torch.testing.assert_close(losses["none"][0], losses["off"][0])
    fake = torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    view = F.interpolate(fake, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    want = g_loss(critic(view, emb).logits)
    torch.testing.assert_close(losses["on"][1]["stage1_critic"], want)
    torch.testing.assert_close(losses["on"][0], losses["off"][0] + 2.0 * want)
    assert not torch.allclose(grads["on"], grads["off"])
    assert all(p.grad is None for p in critic.parameters())
