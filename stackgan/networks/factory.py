"""Build initialised (G, D) pairs from a :class:`~stackgan.config.ModelConfig`."""

from __future__ import annotations

from torch import nn

from stackgan.config import ModelConfig
from stackgan.networks.init import init_weights
from stackgan.networks.stage1 import Stage1Discriminator, Stage1Generator
from stackgan.networks.stage2 import Stage2Discriminator, Stage2Generator


def d_cond_dims(model_cfg: ModelConfig) -> tuple[int, int]:
    """(size of D's condition input, size of its tiled text code) for the preset.

    paper: the raw text embedding through D's own FC to ``d_text_dim``;
    pytorch: G's mu (``cond_dim``), tiled as is.
    """
    if model_cfg.arch == "paper":
        return model_cfg.text_dim, model_cfg.d_text_dim
    return model_cfg.cond_dim, model_cfg.cond_dim


def build_generator(model_cfg: ModelConfig, stage: int) -> nn.Module:
    """The (uninitialised) generator of ``stage`` (1 or 2)."""
    m = model_cfg
    if stage == 1:
        return Stage1Generator(
            text_dim=m.text_dim,
            z_dim=m.z_dim,
            cond_dim=m.cond_dim,
            gf_dim=m.gf_dim,
            arch=m.arch,
            ca_nonlinearity=m.resolved_ca_nonlinearity,
            text_film=m.g_text_film,
            text_input=m.g_text_input,
        )
    if stage == 2:
        return Stage2Generator(
            text_dim=m.text_dim,
            cond_dim=m.cond_dim,
            gf_dim=m.gf_dim,
            r_num=m.r_num,
            arch=m.arch,
            ca_nonlinearity=m.resolved_ca_nonlinearity,
            skip=m.stage2_skip,
            skip_base=m.stage2_skip_base,
            exact_consistency=m.stage2_exact_consistency,
        )
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def build_discriminator(model_cfg: ModelConfig, stage: int) -> nn.Module:
    """The (uninitialised) discriminator of ``stage`` (1 or 2)."""
    cond_in, code = d_cond_dims(model_cfg)
    if stage == 1:
        return Stage1Discriminator(
            df_dim=model_cfg.df_dim,
            cond_in_dim=cond_in,
            code_dim=code,
            arch=model_cfg.arch,
            projection=model_cfg.d_projection,
            projection_only=model_cfg.d_projection_only,
        )
    if stage == 2:
        return Stage2Discriminator(
            df_dim=model_cfg.df_dim,
            cond_in_dim=cond_in,
            code_dim=code,
            arch=model_cfg.arch,
            uncond_head=model_cfg.resolved_uncond_head,
            projection=model_cfg.d_projection,
            projection_only=model_cfg.d_projection_only,
        )
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def build_networks(model_cfg: ModelConfig, stage: int) -> tuple[nn.Module, nn.Module]:
    """Initialised (G, D) of ``stage``; Stage-II G excludes the frozen Stage-I G."""
    G = init_weights(build_generator(model_cfg, stage))
    D = init_weights(build_discriminator(model_cfg, stage))
    if stage == 2 and model_cfg.stage2_zero_init:
        G.zero_refinement()
    return G, D


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (BatchNorm running statistics are buffers, never counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
