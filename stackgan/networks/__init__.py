"""StackGAN networks: both architecture presets (``paper`` = TF birds, ``pytorch``)."""

from stackgan.networks.blocks import DOutput
from stackgan.networks.conditioning import CondAugment, d_condition
from stackgan.networks.factory import (
    build_discriminator,
    build_generator,
    build_networks,
    count_params,
    d_cond_dims,
)
from stackgan.networks.init import init_weights
from stackgan.networks.stage1 import Stage1Discriminator, Stage1Generator
from stackgan.networks.stage2 import Stage2Discriminator, Stage2Generator

__all__ = [
    "CondAugment",
    "DOutput",
    "Stage1Discriminator",
    "Stage1Generator",
    "Stage2Discriminator",
    "Stage2Generator",
    "build_discriminator",
    "build_generator",
    "build_networks",
    "count_params",
    "d_cond_dims",
    "d_condition",
    "init_weights",
]
