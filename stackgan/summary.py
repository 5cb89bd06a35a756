"""Parameter counts and FLOPs of the four StackGAN networks (printed by ``stackgan summary``).

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls and
convolutions, forward and backward; one multiply-add = 2 FLOPs; BatchNorm, activations,
up-sampling and losses are not counted). They are the architecture's nominal FLOPs: the
fused upsample+conv kernel used in training executes fewer (see ``UpBlock``). FLOP counts
depend only on shapes, so by default the networks are built and run on the ``meta``
device: no memory, no compute, exact counts for full-size networks in well under a second
(``--device cpu`` really runs them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from stackgan.config import GStepFakes, LossConfig, ModelConfig, to_dict
from stackgan.losses import mismatched_condition
from stackgan.networks import build_networks, count_params, d_condition
from stackgan.networks.blocks import set_fused_upsampling
from stackgan.training.step import StepContext, d_update, g_loss_terms

NETWORKS: dict[str, str] = {
    "stage1_g": "Stage-I G",
    "stage1_d": "Stage-I D",
    "stage2_g": "Stage-II G",
    "stage2_d": "Stage-II D",
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn`` runs (forward and any backward it calls)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _inputs(model_cfg: ModelConfig, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.randn(batch, model_cfg.text_dim, device=device)  # [B, text_dim]
    z = torch.randn(batch, model_cfg.z_dim, device=device)  # [B, z_dim]
    return emb, z


def network_flops(model_cfg: ModelConfig, batch: int = 2, device: str = "meta") -> dict[str, Any]:
    """Trainable parameters and forward FLOPs per image of each network.

    D is scored on (image, condition) only (no mismatched pass, no second batch).
    Stage-II G's numbers exclude the frozen Stage-I G.

    Returns:
        ``{name: {"params": int, "forward_flops_per_image": float}}`` for ``stage1_g``,
        ``stage1_d``, ``stage2_g``, ``stage2_d``.
    """
    out: dict[str, Any] = {}
    emb, z = _inputs(model_cfg, batch, device)
    for stage, size in ((1, 64), (2, 256)):
        with torch.device(device):
            G, D = build_networks(model_cfg, stage)
        set_fused_upsampling(G, False)  # count the architecture's nominal convolutions
        with torch.no_grad():
            if stage == 1:
                g_flops = count_flops(lambda G=G: G(emb, z))
            else:
                low = torch.randn(batch, 3, 64, 64, device=device)  # [B, 3, 64, 64]
                g_flops = count_flops(lambda G=G, low=low: G(low, emb))
            mu = torch.randn(batch, model_cfg.cond_dim, device=device)  # [B, cond_dim]
            img = torch.randn(batch, 3, size, size, device=device)  # [B, 3, S, S]
            cond = d_condition(model_cfg, emb, mu)
            d_flops = count_flops(lambda D=D, img=img, cond=cond: D(img, cond))
        out[f"stage{stage}_g"] = {
            "params": count_params(G),
            "forward_flops_per_image": g_flops / batch,
        }
        out[f"stage{stage}_d"] = {
            "params": count_params(D),
            "forward_flops_per_image": d_flops / batch,
        }
    return out


def training_step_flops(
    model_cfg: ModelConfig,
    stage: int,
    batch: int,
    *,
    loss_cfg: LossConfig | None = None,
    g_step_fakes: GStepFakes = "reuse",
    device: str = "meta",
) -> dict[str, Any]:
    """FLOPs of one training step (one D update + one G update), as the training loop runs it.

    D step: D on (real, cond) with the shifted mismatched conditions, D on
    (fake.detach(), cond), backward of ``d_loss``. G step: G forward (Stage-II: the frozen
    Stage-I G forward under ``no_grad`` first), D on (fake, cond) with D's parameters
    frozen, backward of ``g_loss + kl_weight * kl``. With ``g_step_fakes="reuse"`` (PT)
    the fakes are made once, with gradient, and counted in the G step; with ``"redraw"``
    (TF) the D step makes its own fakes under ``no_grad``. No optimizer step is counted.

    Returns:
        ``{"stage", "batch", "g_step_fakes", "d_step", "g_step", "total"}`` (FLOPs for the
        batch) and ``"per_image"`` = total / batch.
    """
    if batch < 2:
        raise ValueError(f"batch must be >= 2 (the mismatched pairs use B-1 rows), got {batch}")
    from stackgan.stages import StackedGenerator

    loss_cfg = loss_cfg or LossConfig()
    if loss_cfg.r1_gamma > 0:  # FlopCounterMode's module hooks cannot follow autograd.grad
        raise ValueError("loss.r1_gamma: the FLOP count does not cover the R1 double backward")
    ctx = StepContext(model=model_cfg, loss=loss_cfg)  # the references' separate D passes
    size = 64 if stage == 1 else 256
    with torch.device(device):
        G, D = build_networks(model_cfg, stage)
        G1 = build_networks(model_cfg, 1)[0].requires_grad_(False) if stage == 2 else None
    for net in (G, G1):
        if net is not None:
            set_fused_upsampling(net, False)  # nominal FLOPs (the fused kernel does 4/9 of them)
    emb, z = _inputs(model_cfg, batch, device)
    real = torch.randn(batch, 3, size, size, device=device)  # [B, 3, S, S]

    def generate() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if G1 is None:
            return G(emb, z)
        return StackedGenerator(G1, G)(emb, z)  # the frozen G1 under no_grad, then G

    fakes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def d_step() -> None:
        if g_step_fakes == "reuse":
            fake, mu, _ = fakes[0]
        else:
            with torch.no_grad():
                fake, mu, _ = generate()
        cond = d_condition(model_cfg, emb, mu)
        wrong = mismatched_condition(cond, None, "shift")
        d_update(D, ctx, real, fake.detach(), cond, wrong, lambda loss: loss.backward())

    def g_step() -> None:
        fake, mu, logvar = fakes[0] if g_step_fakes == "reuse" else generate()
        D.requires_grad_(False)
        g_loss_terms(D, ctx, real, fake, emb, mu, logvar, None, None)[0].backward()
        D.requires_grad_(True)

    g_forward = 0
    if g_step_fakes == "reuse":
        g_forward = count_flops(lambda: fakes.append(generate()))
    d_flops = count_flops(d_step)
    g_flops = g_forward + count_flops(g_step)
    total = d_flops + g_flops
    return {
        "stage": stage,
        "batch": batch,
        "g_step_fakes": g_step_fakes,
        "d_step": d_flops,
        "g_step": g_flops,
        "total": total,
        "per_image": total / batch,
    }


def summarize(
    model_cfg: ModelConfig,
    batch: int = 2,
    *,
    g_step_fakes: GStepFakes = "reuse",
    device: str = "meta",
) -> dict[str, Any]:
    """Everything ``stackgan summary`` prints, as a JSON-friendly dict."""
    return {
        "model": to_dict(model_cfg),
        "batch": batch,
        "device": device,
        "flop_convention": "FlopCounterMode: matmul/conv only, 1 multiply-add = 2 FLOPs",
        "networks": network_flops(model_cfg, batch, device),
        "train_step": {
            f"stage{s}": training_step_flops(
                model_cfg, s, batch, g_step_fakes=g_step_fakes, device=device
            )
            for s in (1, 2)
        },
    }


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable tables of a :func:`summarize` result."""
    m = summary["model"]
    lines = [
        f"StackGAN networks, arch={m['arch']} (gf_dim {m['gf_dim']}, df_dim {m['df_dim']}, "
        f"cond_dim {m['cond_dim']}, d_text_dim {m['d_text_dim']}, z_dim {m['z_dim']}, "
        f"text_dim {m['text_dim']}, r_num {m['r_num']}, ca {m['ca_nonlinearity']}, "
        f"uncond_head {m['uncond_head']})",
        "",
        f"{'network':<12} {'trainable params':>16} {'forward GFLOP/image':>20}",
    ]
    for key, label in NETWORKS.items():
        net = summary["networks"][key]
        lines.append(
            f"{label:<12} {net['params']:>16,} {net['forward_flops_per_image'] / 1e9:>20.4f}"
        )
    lines.append("(Stage-II G excludes the frozen Stage-I G)")
    steps = summary["train_step"]
    fakes = steps["stage1"]["g_step_fakes"]
    lines += [
        "",
        f"training step = 1 D step + 1 G step (fakes: {fakes}), counted on batch "
        f"{summary['batch']}, per image:",
        f"{'stage':<12} {'D step GFLOP':>14} {'G step GFLOP':>14} {'total GFLOP':>14}",
    ]
    for s, label in ((1, "Stage-I"), (2, "Stage-II")):
        st = steps[f"stage{s}"]
        b = st["batch"]
        lines.append(
            f"{label:<12} {st['d_step'] / b / 1e9:>14.4f} {st['g_step'] / b / 1e9:>14.4f} "
            f"{st['per_image'] / 1e9:>14.4f}"
        )
    lines.append(f"({summary['flop_convention']})")
    return "\n".join(lines)
