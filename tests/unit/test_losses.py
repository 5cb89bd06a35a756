"""Losses against hand-computed values; mismatched conditions."""

from __future__ import annotations

import math

import pytest
import torch

from stackgan.losses import (
    contrastive_loss,
    d_loss,
    g_loss,
    kl_loss,
    mismatched_condition,
    stage_consistency_loss,
)


def bce1(x: float) -> float:  # -log sigmoid(x)
    return math.log(1.0 + math.exp(-x))


def bce0(x: float) -> float:  # -log(1 - sigmoid(x))
    return math.log(1.0 + math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_zero_logits_give_log2():
    zeros = torch.zeros(5)
    loss, parts = d_loss(zeros, zeros[:4], zeros)
    assert loss.item() == pytest.approx(2 * math.log(2))  # log2 + (log2 + log2) / 2
    for key in ("loss_real", "loss_wrong", "loss_fake"):
        assert parts[key].item() == pytest.approx(math.log(2))
    for key in ("d_real", "d_wrong", "d_fake"):
        assert parts[key].item() == pytest.approx(0.5)
    assert g_loss(zeros).item() == pytest.approx(math.log(2))


def test_d_loss_without_uncond_head_hand_computed():
    real, wrong, fake = [2.0, -1.0, 0.3], [0.5, -2.5], [-3.0, 1.0, 0.0]
    loss, parts = d_loss(t(real), t(wrong), t(fake))
    l_real = mean(bce1(x) for x in real)
    l_wrong = mean(bce0(x) for x in wrong)
    l_fake = mean(bce0(x) for x in fake)
    assert loss.item() == pytest.approx(l_real + 0.5 * (l_wrong + l_fake))
    assert parts["loss_real"].item() == pytest.approx(l_real)
    assert parts["loss_wrong"].item() == pytest.approx(l_wrong)
    assert parts["loss_fake"].item() == pytest.approx(l_fake)
    assert parts["d_real"].item() == pytest.approx(mean(sig(x) for x in real))
    assert parts["d_wrong"].item() == pytest.approx(mean(sig(x) for x in wrong))
    assert parts["d_fake"].item() == pytest.approx(mean(sig(x) for x in fake))
    assert all(not p.requires_grad for p in parts.values())
    assert "loss_real_uncond" not in parts


@pytest.mark.parametrize("w", [1.0, 0.5])
def test_d_loss_with_uncond_head_hand_computed(w):
    real, wrong, fake = [1.5, -0.5], [0.7], [-1.0, 2.0]
    real_u, fake_u = [0.2, 3.0], [-0.4, 0.9]
    loss, parts = d_loss(t(real), t(wrong), t(fake), t(real_u), t(fake_u), uncond_weight=w)
    expected = (mean(map(bce1, real)) + w * mean(map(bce1, real_u))) / 2 + (
        mean(map(bce0, fake)) + mean(map(bce0, wrong)) + w * mean(map(bce0, fake_u))
    ) / 3
    assert loss.item() == pytest.approx(expected)
    assert parts["loss_real_uncond"].item() == pytest.approx(mean(map(bce1, real_u)))
    assert parts["loss_fake_uncond"].item() == pytest.approx(mean(map(bce0, fake_u)))
    assert parts["d_fake_uncond"].item() == pytest.approx(mean(map(sig, fake_u)))
    with pytest.raises(ValueError, match="both real_uncond and fake_uncond"):
        d_loss(t(real), t(wrong), t(fake), t(real_u), None)


def test_d_loss_gradients_weight_each_term():
    real = t([0.4, -1.2]).requires_grad_()
    wrong = t([1.1]).requires_grad_()
    fake = t([-0.3, 0.8]).requires_grad_()
    loss, _ = d_loss(real, wrong, fake)
    loss.backward()
    # d/dx mean BCE(x, y) = (sigmoid(x) - y) / N, times the term weight (1, 1/2, 1/2)
    torch.testing.assert_close(real.grad, t([(sig(x) - 1) / 2 for x in (0.4, -1.2)]))
    torch.testing.assert_close(wrong.grad, t([0.5 * sig(1.1)]))
    torch.testing.assert_close(fake.grad, t([0.5 * sig(x) / 2 for x in (-0.3, 0.8)]))


def test_g_loss_non_saturating_and_gradients():
    fake = t([-2.0, 0.5, 1.0]).requires_grad_()
    assert g_loss(fake).item() == pytest.approx(mean(map(bce1, [-2.0, 0.5, 1.0])))
    fake_u = t([0.3, -0.1, 4.0]).requires_grad_()
    loss = g_loss(fake, fake_u, uncond_weight=0.5)
    expected = mean(map(bce1, [-2.0, 0.5, 1.0])) + 0.5 * mean(map(bce1, [0.3, -0.1, 4.0]))
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    torch.testing.assert_close(fake.grad, t([(sig(x) - 1) / 3 for x in (-2.0, 0.5, 1.0)]))
    torch.testing.assert_close(fake_u.grad, t([0.5 * (sig(x) - 1) / 3 for x in (0.3, -0.1, 4.0)]))
    # with weight 0 the unconditional head gets no gradient, the conditional one still does
    fake.grad = fake_u.grad = None
    g_loss(fake, fake_u, uncond_weight=0.0).backward()
    assert torch.equal(fake_u.grad, torch.zeros(3, dtype=torch.float64))
    assert (fake.grad < 0).all()
    # non-saturating: a confidently rejected fake still gets a large gradient
    x = t([-10.0]).requires_grad_()
    g_loss(x).backward()
    assert x.grad.abs().item() > 0.99


def test_losses_promote_low_precision_logits():
    x = torch.tensor([0.25, -0.5], dtype=torch.bfloat16)
    assert g_loss(x).dtype == torch.float32
    assert d_loss(x, x, x)[0].dtype == torch.float32


def kl_1d(mu: float, logvar: float) -> float:
    """KL(N(mu, s^2) || N(0, 1)) = log(1/s) + (s^2 + mu^2 - 1) / 2."""
    s = math.exp(0.5 * logvar)
    return math.log(1.0 / s) + (s * s + mu * mu - 1.0) / 2.0


def test_kl_loss_matches_closed_form_and_is_a_mean_over_batch_and_dims():
    mu = [[0.0, 1.0, -2.0], [0.5, 0.0, 3.0]]
    logvar = [[0.0, -1.0, 0.7], [2.0, 0.3, -0.2]]
    expected = mean(
        kl_1d(m, v) for rm, rv in zip(mu, logvar, strict=True) for m, v in zip(rm, rv, strict=True)
    )
    assert kl_loss(t(mu), t(logvar)).item() == pytest.approx(expected)
    assert kl_loss(torch.zeros(4, 8), torch.zeros(4, 8)).item() == 0.0
    assert kl_loss(t(mu), t(logvar)).item() > 0


def test_shift_mismatch_pairs_image_i_with_text_i_plus_1():
    cond = torch.arange(12.0).reshape(4, 3)
    wrong = mismatched_condition(cond, None, "shift")
    assert wrong.shape == (3, 3)
    for i in range(3):
        assert torch.equal(wrong[i], cond[i + 1])
    with pytest.raises(ValueError, match="at least 2"):
        mismatched_condition(cond[:1], None, "shift")
    with pytest.raises(ValueError, match="unknown mismatch mode"):
        mismatched_condition(cond, None, "roll")


def test_class_aware_mismatch_never_pairs_the_same_class():
    class_ids = torch.tensor([0, 0, 1, 2, 2, 2])
    cond = torch.arange(6.0)[:, None].repeat(1, 2)  # row value = source index
    gen = torch.Generator().manual_seed(0)
    seen = [set() for _ in range(6)]
    for _ in range(200):
        wrong = mismatched_condition(cond, class_ids, "class_aware", gen)
        assert wrong.shape == cond.shape
        src = wrong[:, 0].long()
        assert (class_ids[src] != class_ids).all()
        for i, j in enumerate(src.tolist()):
            seen[i].add(j)
    # every other-class sample is drawn for every row (uniform over the allowed partners)
    for i in range(6):
        assert seen[i] == {j for j in range(6) if class_ids[j] != class_ids[i]}
    a = mismatched_condition(cond, class_ids, "class_aware", torch.Generator().manual_seed(7))
    b = mismatched_condition(cond, class_ids, "class_aware", torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_class_aware_mismatch_errors():
    cond = torch.randn(3, 4)
    with pytest.raises(ValueError, match="no sample of another class"):
        mismatched_condition(cond, torch.tensor([5, 5, 5]), "class_aware")
    with pytest.raises(ValueError, match="needs class_ids"):
        mismatched_condition(cond, None, "class_aware")
    with pytest.raises(ValueError, match="class_ids has 2 entries"):
        mismatched_condition(cond, torch.tensor([0, 1]), "class_aware")


def test_stage_consistency_loss_ties_layout_not_detail():
    g = torch.Generator().manual_seed(0)
    low = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, size=64)
    same = torch.nn.functional.interpolate(low, scale_factor=4, mode="nearest")
    assert stage_consistency_loss(same, low).item() < 1e-6
    checker = ((torch.arange(256)[:, None] + torch.arange(256)[None, :]) % 2) * 0.6 - 0.3
    assert stage_consistency_loss(same + checker, low).item() < 1e-6  # detail is free
    other = same.flip(-1)  # the same colours, another layout
    assert stage_consistency_loss(other, low).item() > 0.2
    x = same.clone().requires_grad_(True)
    stage_consistency_loss(x + 0.1, low).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_hard_mismatch_mixes_nearest_other_class_and_uniform_rows():
    # rows 0/1 and 2/3 are near-duplicates of different classes; 4 and 5 are far away
    base = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    cond = torch.stack([base[0], base[0] + 0.01, base[1], base[1] + 0.01, base[2], -base[2]])
    ids = torch.tensor([1, 2, 3, 4, 5, 6])
    nearest = {0: 1, 1: 0, 2: 3, 3: 2}
    hits = 0
    for seed in range(40):
        wrong = mismatched_condition(cond, ids, "hard", torch.Generator().manual_seed(seed))
        assert wrong.shape == cond.shape
        for i in range(6):
            j = int((cond - wrong[i]).abs().sum(1).argmin())
            assert ids[j] != ids[i]  # never the own class
            hits += i in nearest and j == nearest[i]
    # half the rows take the nearest other class, the rest a uniform one (1/5 of them nearest)
    assert 0.45 < hits / (40 * 4) < 0.75


def test_contrastive_loss_is_image_to_text_cross_entropy_hand_computed():
    pooled = t([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    proj = t([[2.0, 0.0], [0.5, 1.0], [0.0, -1.0]])
    scores = [
        [sum(a * b for a, b in zip(p, q, strict=True)) for q in proj.tolist()]
        for p in pooled.tolist()
    ]
    expected = mean(
        math.log(sum(math.exp(s) for s in row)) - row[i] for i, row in enumerate(scores)
    )
    assert contrastive_loss(pooled, proj).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_leaves_same_class_captions_out_of_the_negatives():
    pooled = t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    proj = t([[3.0, 0.0], [0.0, 3.0], [3.0, 3.0]])
    ids = torch.tensor([5, 5, 7])
    scores = (pooled @ proj.t()).tolist()
    # rows 0 and 1 share class 5: each one's softmax excludes the other's caption
    kept = [[0, 2], [1, 2], [0, 1, 2]]
    expected = mean(
        math.log(sum(math.exp(scores[i][j]) for j in kept[i])) - scores[i][i] for i in range(3)
    )
    got = contrastive_loss(pooled, proj, ids).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got < contrastive_loss(pooled, proj).item()


def test_contrastive_loss_pulls_each_image_towards_its_own_caption():
    torch.manual_seed(0)
    pooled = torch.randn(6, 4, requires_grad=True)
    proj = torch.randn(6, 4)
    contrastive_loss(pooled, proj).backward()
    # gradient descent raises the diagonal score relative to the row's other scores
    step = pooled.detach() - 0.1 * pooled.grad
    before = pooled.detach() @ proj.t()
    after = step @ proj.t()
    margin = lambda s: s.diagonal() - torch.logsumexp(s, dim=1)  # noqa: E731
    assert bool((margin(after) > margin(before)).all())


def test_mode_seeking_loss_is_the_inverse_image_to_noise_distance_ratio():
    from stackgan.losses import mode_seeking_loss

    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    za, zb = torch.zeros(2, 8), torch.full((2, 8), 2.0)
    assert mode_seeking_loss(a, b, za, zb).item() == pytest.approx(1.0 / (0.25 + 1e-5))
    # identical images from different noise: the largest penalty; the gradient pushes apart
    x = torch.zeros(2, 3, 4, 4, requires_grad=True)
    y = torch.full((2, 3, 4, 4), 0.1)
    loss = mode_seeking_loss(x, y, za, zb)
    loss.backward()
    assert bool((x.grad > 0).all())  # moving x down (away from y) lowers the loss
    assert mode_seeking_loss(a, a, za, zb).item() == pytest.approx(1e5)


def test_r1_penalty_is_the_mean_squared_input_gradient_of_the_first_rows():
    from stackgan.losses import r1_penalty

    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    w = torch.randn(3, 4, 4)
    logits = (x[:2] * w).flatten(1).sum(1) + 3.0 * x[2:].sum()  # later rows feed in too
    want = w.square().sum()  # d logit_i / d x_i = w for the two real rows
    assert r1_penalty(logits, x).item() == pytest.approx(want.item(), rel=1e-5)
    quad = (x[:2] ** 2).flatten(1).sum(1)  # gradient 2 x_i: penalty 4 mean ||x_i||^2
    p = r1_penalty(quad, x)
    assert p.item() == pytest.approx(4 * x[:2].detach().square().flatten(1).sum(1).mean().item())
    p.backward()  # the gradient stays in the graph: d p / d x_i = 8 x_i / 2 rows
    torch.testing.assert_close(x.grad[:2], 4 * x[:2].detach())
    assert bool((x.grad[2:] == 0).all())
