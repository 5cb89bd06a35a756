"""StackGAN losses as pure functions on discriminator logits.

Binary cross-entropy with logits everywhere (the same math as the references' sigmoid +
BCE, numerically safer), labels 1 (real) / 0 (wrong, fake), no label smoothing. Logits
are promoted to float32 first, so the losses are safe under bf16/fp16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stackgan.config import MismatchMode


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean BCE-with-logits of ``logits`` against a constant label."""
    x = logits.float()
    return F.binary_cross_entropy_with_logits(x, torch.full_like(x, target))


def _mean_prob(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits.detach().float()).mean()


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), averaged over the batch AND the code dimensions.

    The weight (``LossConfig.kl_weight``, 2.0 in both references) is applied by the caller.
    """
    return -0.5 * torch.mean(1.0 + logvar - mu.pow(2) - logvar.exp())


def stage_consistency_loss(high: torch.Tensor, low: torch.Tensor, blocks: int = 16) -> torch.Tensor:
    """Mean L1 between ``blocks`` x ``blocks`` block means of the Stage-II image [B, 3, 256, 256]
    and of the Stage-I image it was made from [B, 3, 64, 64] (not in the paper; see
    ``LossConfig.stage_consistency``). Only the layout and colours are tied, not the detail."""
    return (
        (F.adaptive_avg_pool2d(high.float(), blocks) - F.adaptive_avg_pool2d(low.float(), blocks))
        .abs()
        .mean()
    )


def contrastive_loss(
    pooled: torch.Tensor, cond_proj: torch.Tensor, class_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Image-to-text InfoNCE over a batch on the projection D's pair scores (not in the paper).

    ``scores[i, j] = <pooled_i, cond_proj_j>`` is the projection term of image i with
    condition j; each image must pick its own condition (the diagonal) among the batch's,
    as in the image-sentence contrastive loss of XMC-GAN (Zhang et al., CVPR 2021), but on
    D's existing projection so it adds no parameters. Conditions of the image's own class
    other than its own are left out of the softmax (they are not wrong captions).

    Args:
        pooled: D's pooled image features [B, C].
        cond_proj: D's projected conditions [B, C], row i matching image i.
        class_ids: class of each row [B], or None to use every other row as a negative.
    """
    scores = pooled.float() @ cond_proj.float().t()  # [B, B]
    if class_ids is not None:
        ids = class_ids.reshape(-1).to(scores.device)
        same = (ids[:, None] == ids[None, :]) & ~torch.eye(
            ids.shape[0], dtype=torch.bool, device=scores.device
        )
        scores = scores.masked_fill(same, float("-inf"))
    target = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, target)


def mode_seeking_loss(
    fake_a: torch.Tensor, fake_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
) -> torch.Tensor:
    """MSGAN's mode-seeking term (Mao et al., CVPR 2019; not in StackGAN).

    ``1 / (mean|fake_a - fake_b| / mean|z_a - z_b| + 1e-5)`` for two fakes of the same
    captions from different noise: minimising it pushes G to make its images depend on z.
    """
    ratio = (fake_a.float() - fake_b.float()).abs().mean() / (
        (z_a.float() - z_b.float()).abs().mean()
    )
    return 1.0 / (ratio + 1e-5)


def r1_penalty(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., ICML 2018; not in StackGAN): ``mean_i ||d logits_i / d images_i||^2``.

    ``logits`` [B] are D's outputs on the real pairs; ``images`` [B', ...] (B' >= B, a
    tensor that requires grad and that the logits were computed from) hold those real
    images in their first B rows; later rows (the fakes of a joint batch) are left out.
    The gradient stays in the graph (``create_graph``), so back-propagating the penalty
    trains D to be flat around the real data. The caller weighs it by ``gamma / 2``.
    """
    (grad,) = torch.autograd.grad(logits.float().sum(), images, create_graph=True)
    return grad[: logits.shape[0]].float().square().flatten(1).sum(1).mean()


def d_loss(
    real: torch.Tensor,
    wrong: torch.Tensor,
    fake: torch.Tensor,
    real_uncond: torch.Tensor | None = None,
    fake_uncond: torch.Tensor | None = None,
    uncond_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Matching-aware discriminator loss.

    Without an unconditional head: ``L_real + (L_wrong + L_fake) / 2``. With one (both
    ``real_uncond`` and ``fake_uncond`` given; w = ``uncond_weight``, 1 in StackGAN-Pytorch):
    ``(L_real + w*L_real_u) / 2 + (L_fake + L_wrong + w*L_fake_u) / 3``.

    Args:
        real: logits of (real image, matching text) [B].
        wrong: logits of (real image, mismatched text) [B'].
        fake: logits of (fake image, matching text) [B].
        real_uncond: unconditional-head logits of the real images [B], or None.
        fake_uncond: unconditional-head logits of the fakes [B], or None.
        uncond_weight: weight of the unconditional terms.

    Returns:
        The loss and detached parts for logging: ``loss_real``, ``loss_wrong``,
        ``loss_fake``, mean sigmoid outputs ``d_real``, ``d_wrong``, ``d_fake`` (and the
        ``*_uncond`` counterparts when the head exists).
    """
    if (real_uncond is None) != (fake_uncond is None):
        raise ValueError("give both real_uncond and fake_uncond, or neither")
    loss_real, loss_wrong, loss_fake = _bce(real, 1.0), _bce(wrong, 0.0), _bce(fake, 0.0)
    parts = {
        "loss_real": loss_real,
        "loss_wrong": loss_wrong,
        "loss_fake": loss_fake,
        "d_real": _mean_prob(real),
        "d_wrong": _mean_prob(wrong),
        "d_fake": _mean_prob(fake),
    }
    if real_uncond is None or fake_uncond is None:
        loss = loss_real + 0.5 * (loss_wrong + loss_fake)
    else:
        loss_real_u, loss_fake_u = _bce(real_uncond, 1.0), _bce(fake_uncond, 0.0)
        loss = (loss_real + uncond_weight * loss_real_u) / 2.0 + (
            loss_fake + loss_wrong + uncond_weight * loss_fake_u
        ) / 3.0
        parts |= {
            "loss_real_uncond": loss_real_u,
            "loss_fake_uncond": loss_fake_u,
            "d_real_uncond": _mean_prob(real_uncond),
            "d_fake_uncond": _mean_prob(fake_uncond),
        }
    return loss, {k: v.detach() for k, v in parts.items()}


def g_loss(
    fake: torch.Tensor, fake_uncond: torch.Tensor | None = None, uncond_weight: float = 1.0
) -> torch.Tensor:
    """Non-saturating generator loss: BCE(fake, 1) [+ w * BCE(fake_uncond, 1)]."""
    loss = _bce(fake, 1.0)
    if fake_uncond is not None:
        loss = loss + uncond_weight * _bce(fake_uncond, 1.0)
    return loss


def mismatched_condition(
    cond: torch.Tensor,
    class_ids: torch.Tensor | None,
    mode: MismatchMode,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The mismatched conditions (``wrong_cond``) for the discriminator.

    Args:
        cond: D's conditions [B, .] for the real images, row i matching image i.
        class_ids: class of each sample [B] (only used by ``"class_aware"``).
        mode: ``"shift"``: ``cond[1:]`` (B-1 rows; image i is paired with text i+1, the
            StackGAN-Pytorch batch roll, same-class pairs possible). ``"class_aware"``:
            B rows, row i is the condition of a uniformly drawn sample of another class.
            ``"hard"`` (not in the paper): like ``class_aware``, but each row is, with
            probability 1/2, the other-class condition most similar to its own (cosine),
            so D must also reject captions that differ in one detail only.
        generator: random generator for ``"class_aware"`` (on ``cond``'s device).

    Raises:
        ValueError: unknown mode, a batch of one (``shift``), missing ``class_ids`` or a
            sample without another-class partner in the batch (``class_aware``).
    """
    if mode == "shift":
        if cond.shape[0] < 2:
            raise ValueError("mismatch 'shift' needs a batch of at least 2")
        return cond[1:]
    if mode not in ("class_aware", "hard"):
        raise ValueError(
            f"unknown mismatch mode {mode!r}; expected 'shift', 'class_aware' or 'hard'"
        )
    if class_ids is None:
        raise ValueError(f"mismatch {mode!r} needs class_ids")
    ids = class_ids.reshape(-1).to(cond.device)
    if ids.shape[0] != cond.shape[0]:
        raise ValueError(f"class_ids has {ids.shape[0]} entries, cond {cond.shape[0]} rows")
    other = ids[None, :] != ids[:, None]  # [B, B], True where classes differ
    lonely = ~other.any(dim=1)
    if bool(lonely.any()):
        rows = torch.nonzero(lonely).flatten().tolist()
        raise ValueError(
            f"mismatch {mode!r}: no sample of another class in the batch for row(s) "
            f"{rows} (class {ids[rows[0]].item()}); use larger or class-mixed batches, or 'shift'"
        )
    idx = torch.multinomial(other.float(), 1, generator=generator).flatten()  # [B]
    if mode == "hard":
        unit = torch.nn.functional.normalize(cond.detach().float(), dim=1)
        sim = (unit @ unit.T).masked_fill(~other, float("-inf"))
        nearest = sim.argmax(dim=1)  # [B] most similar other-class row
        coin = torch.rand(idx.shape[0], generator=generator, device=cond.device) < 0.5
        idx = torch.where(coin, nearest, idx)
    return cond[idx]


def interpolated_captions(emb: torch.Tensor, fraction: float) -> tuple[torch.Tensor, int]:
    """GAN-INT (Reed et al., ICML 2016): ``(emb with its last k rows mixed, k)``.

    ``k = round(fraction * B)``; each of the last k rows becomes the midpoint of its own
    embedding and the next row's (cyclically), ``0.5 * (emb[i] + emb[(i + 1) % B])``. The
    first ``B - k`` rows are returned unchanged (they carry the mode-seeking pairs and the
    contrastive term). Batches are shuffled, so the partner is a random caption.
    """
    n = emb.shape[0]
    k = min(round(fraction * n), n)
    if k == 0:
        return emb, 0
    rows = torch.arange(n - k, n, device=emb.device)
    mixed = 0.5 * (emb[rows] + emb[(rows + 1) % n])
    return torch.cat([emb[: n - k], mixed.to(emb.dtype)]), k
