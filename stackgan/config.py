"""Typed, validated configuration for models, losses and training.

Every component takes explicit arguments; these frozen dataclasses are the single
home of training defaults. ``from_dict`` rejects unknown keys and names the bad key.
Options marked "per preset" default to ``None`` and are resolved from the
architecture preset (``paper`` = TensorFlow birds code, ``pytorch`` = StackGAN-Pytorch)
when read (``ModelConfig.resolved_*``, ``RunConfig.caption_mode``/``g_step_fakes``) and
when written out (:func:`to_dict`); nothing is written back into a frozen object, so
``dataclasses.replace(cfg, arch="pytorch")`` gets the pytorch defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from stackgan.augment import POLICIES as AUGMENT_POLICIES
from stackgan.errors import StackGANError

Arch = Literal["paper", "pytorch"]
CaNonlinearity = Literal["relu", "leaky_relu"]
MismatchMode = Literal["shift", "class_aware", "hard"]
Amp = Literal["fp32", "bf16", "fp16", "auto"]
BnMode = Literal["per_rank", "sync"]
SkipBase = Literal["bilinear", "projected"]
FrozenBn = Literal["eval", "train"]
GStepFakes = Literal["reuse", "redraw"]
EmaBn = Literal["copy", "standing"]
DBatch = Literal["separate", "joint"]

T = TypeVar("T")


class ConfigError(StackGANError, ValueError):
    """A configuration value is missing, unknown or out of range (the message names the key)."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


class _ResolvedEquality:
    """Configs with per-preset options are equal when they resolve to the same values
    (``ModelConfig()`` == ``ModelConfig(ca_nonlinearity="leaky_relu")``)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and to_dict(self) == to_dict(other)

    def __hash__(self) -> int:
        return hash(json.dumps(to_dict(self), sort_keys=True))


@dataclass(frozen=True, kw_only=True, eq=False)
class ModelConfig(_ResolvedEquality):
    """Network sizes and architecture switches (see docs/architecture.md).

    ``arch='paper'`` follows the TensorFlow birds code (LeakyReLU CA, own text FC in
    D, bottleneck residual blocks); ``arch='pytorch'`` follows StackGAN-Pytorch
    (ReLU CA, D conditioned on G's detached mu, unconditional Stage-II D head).
    """

    arch: Arch = "paper"
    text_dim: int = 1024  # char-CNN-RNN embedding size
    z_dim: int = 100  # noise size (Stage-I only; Stage-II draws no new z)
    cond_dim: int = 128  # CA output size Ng
    d_text_dim: int = 128  # text code size Nd inside D (pytorch: must equal cond_dim)
    gf_dim: int = 128  # Stage-I G starts at 8*gf_dim channels; Stage-II G base width
    df_dim: int = 64  # D base width
    r_num: int = 4  # residual blocks in Stage-II G
    ca_nonlinearity: CaNonlinearity | None = None  # per preset: paper leaky_relu, pytorch relu
    uncond_head: bool | None = None  # Stage-II D unconditional head; per preset: pytorch True
    # Not in the paper: add a projection term <W text, mean of D's 4x4 features> to the
    # matching-aware logit (Miyato & Koyama 2018), so D must read the text to score a pair.
    d_projection: bool = False
    # Not in the paper (needs d_projection): the text reaches D's matching-aware logit only
    # through the projection term; the joint convolution sees the image features alone
    d_projection_only: bool = False
    # Not in the paper: Stage-II G refines the Stage-I image instead of redrawing it; its
    # decoder output is added (before tanh) to atanh of the bilinearly upsampled Stage-I image
    stage2_skip: bool = False
    # Not in the paper (needs stage2_skip): the last convolution of Stage-II G's decoder
    # starts at zero, so the untrained G returns exactly the upsampled Stage-I image instead
    # of a randomly recoloured one (docs/benchmarks.md, eleventh round)
    stage2_zero_init: bool = False
    # Not in the paper (needs stage2_skip): the upsampled Stage-I image that Stage-II G
    # refines. bilinear: plain bilinear upsampling, whose 64 px view (antialiased bilinear)
    # is a blurred Stage-I image; projected: bilinear plus the least-squares correction
    # that makes its 64 px view the Stage-I image
    stage2_skip_base: SkipBase = "bilinear"
    # Not in the paper: Stage-II G's output is projected so that its 64 px view (antialiased
    # bilinear, the evaluation protocol's read-back) is exactly the Stage-I image, as the
    # Consistency Enforcing Module of Bahat & Michaeli (2020): Stage-II adds detail above the
    # 64 px band and cannot change Stage-I's layout or colours there
    stage2_exact_consistency: bool = False
    # Not in the paper: Stage-I G modulates every up-sampling block's output with the CA
    # condition, h * (1 + gamma(c)) + beta(c) (FiLM), instead of seeing the text only at 4x4
    g_text_film: bool = False
    # Not in the paper (needs g_text_film): False feeds Stage-I G's input FC with z alone, so
    # the text reaches G only through the FiLM layers (layout from z, colours from the text)
    g_text_input: bool = True

    def __post_init__(self) -> None:
        _check(
            self.arch in get_args(Arch),
            "model.arch",
            f"expected one of {get_args(Arch)}, got {self.arch!r}",
        )
        for key in ("text_dim", "z_dim", "cond_dim", "d_text_dim", "gf_dim", "df_dim"):
            _check(
                int(getattr(self, key)) > 0,
                f"model.{key}",
                f"must be > 0, got {getattr(self, key)}",
            )
        _check(self.r_num >= 0, "model.r_num", f"must be >= 0, got {self.r_num}")
        _check(
            self.g_text_input or self.g_text_film,
            "model.g_text_input",
            "false needs model.g_text_film: true (the text must reach G somewhere)",
        )
        _check(
            self.d_projection or not self.d_projection_only,
            "model.d_projection_only",
            "needs model.d_projection: true (the projection term is then D's only text input)",
        )
        _check(
            self.stage2_skip or not self.stage2_zero_init,
            "model.stage2_zero_init",
            "needs model.stage2_skip: true (it zeroes the refinement added to the Stage-I image)",
        )
        _check(
            self.stage2_skip_base in get_args(SkipBase),
            "model.stage2_skip_base",
            f"expected one of {get_args(SkipBase)}, got {self.stage2_skip_base!r}",
        )
        _check(
            self.stage2_skip or self.stage2_skip_base == "bilinear",
            "model.stage2_skip_base",
            "needs model.stage2_skip: true (it is the image that Stage-II refines)",
        )
        _check(
            self.stage2_skip or not self.stage2_exact_consistency,
            "model.stage2_exact_consistency",
            "needs model.stage2_skip: true (it corrects a refinement of the Stage-I image; a "
            "redrawn image can be too far from it for a correction inside [-1, 1])",
        )
        _check(self.gf_dim % 8 == 0, "model.gf_dim", f"must be a multiple of 8, got {self.gf_dim}")
        if self.arch == "pytorch":
            _check(
                self.d_text_dim == self.cond_dim,
                "model.d_text_dim",
                "the pytorch arch conditions D on G's mu, so it must equal "
                f"cond_dim={self.cond_dim}",
            )

    # Options left None are read through these: the value given, else the architecture
    # preset's. Nothing is written back, so dataclasses.replace(cfg, arch=...) re-resolves.
    @property
    def resolved_ca_nonlinearity(self) -> CaNonlinearity:
        """The CA activation: as given, else leaky_relu (paper) / relu (pytorch)."""
        if self.ca_nonlinearity is not None:
            return self.ca_nonlinearity
        return "leaky_relu" if self.arch == "paper" else "relu"

    @property
    def resolved_uncond_head(self) -> bool:
        """Whether Stage-II D has an unconditional head: as given, else only for pytorch."""
        return self.arch == "pytorch" if self.uncond_head is None else self.uncond_head

    def _resolved_fields(self) -> dict[str, Any]:
        return {
            "ca_nonlinearity": self.resolved_ca_nonlinearity,
            "uncond_head": self.resolved_uncond_head,
        }


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Loss weights and the mismatched-pair policy."""

    kl_weight: float = 2.0  # CA KL, mean over batch and dims, as in the released code
    uncond_weight: float = 1.0  # weight of the unconditional-head terms (when the head exists)
    mismatch: MismatchMode = (
        "shift"  # shift = reference batch roll; class_aware = other class guaranteed
    )

    # Stage-II only, not in the paper (0 = off): weight of an L1 tie between the 16x16 block
    # means of the Stage-II image and of its Stage-I input, so Stage-II keeps layout and colours
    stage_consistency: float = 0.0
    # Not in the paper (0 = off; needs model.d_projection): weight of an image-to-text
    # InfoNCE on D's projection scores, for D on real images and for G on its fakes
    contrastive: float = 0.0
    # Not in the paper (0 = off; needs the redrawn G-step fakes): weight of the mode-seeking
    # term of MSGAN (Mao et al., CVPR 2019), 1 / (|G(t, z1) - G(t, z2)| / |z1 - z2|), on
    # half the batch drawn twice, so G cannot ignore its noise
    mode_seeking: float = 0.0
    # Not in the StackGAN paper (0 = off; needs the redrawn G-step fakes): the fraction of
    # the G step's rows conditioned on the midpoint of two captions' embeddings (GAN-INT,
    # Reed et al., ICML 2016), so G also learns the text space between training captions
    text_interpolation: float = 0.0
    # Not in the paper (0 = off): gamma of the R1 penalty (Mescheder et al., ICML 2018), D's
    # squared input gradient on (real image, matching text) pairs x gamma / 2, so D cannot
    # sharpen around the training images
    r1_gamma: float = 0.0
    # Stage-II only, not in the paper (0 = off; needs a 'paper' Stage-I network file that
    # kept its D): weight of a second adversarial term on G2, the trained and frozen Stage-I
    # D judging each Stage-II fake read back to 64 px (antialiased bilinear) with its caption,
    # so Stage-II gets a text-matching signal from its first step
    stage1_critic: float = 0.0

    def __post_init__(self) -> None:
        _check(self.kl_weight >= 0, "loss.kl_weight", f"must be >= 0, got {self.kl_weight}")
        _check(
            self.stage1_critic >= 0,
            "loss.stage1_critic",
            f"must be >= 0, got {self.stage1_critic}",
        )
        _check(self.r1_gamma >= 0, "loss.r1_gamma", f"must be >= 0, got {self.r1_gamma}")
        _check(
            0 <= self.text_interpolation <= 0.5,
            "loss.text_interpolation",
            f"must be in [0, 0.5] (a fraction of the G batch), got {self.text_interpolation}",
        )
        _check(self.contrastive >= 0, "loss.contrastive", f"must be >= 0, got {self.contrastive}")
        _check(
            self.mode_seeking >= 0, "loss.mode_seeking", f"must be >= 0, got {self.mode_seeking}"
        )
        _check(
            self.stage_consistency >= 0,
            "loss.stage_consistency",
            f"must be >= 0, got {self.stage_consistency}",
        )
        _check(
            self.uncond_weight >= 0, "loss.uncond_weight", f"must be >= 0, got {self.uncond_weight}"
        )
        _check(
            self.mismatch in get_args(MismatchMode),
            "loss.mismatch",
            f"expected one of {get_args(MismatchMode)}, got {self.mismatch!r}",
        )


CaptionMode = Literal["single", "mean4"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation, schedule, precision, data stream and bookkeeping for one stage.

    ``batch_size`` is PER RANK: the global batch is ``batch_size x world_size`` (the
    paper used 64 on one GPU; StackGAN-Pytorch used 64 per GPU). Options left ``None``
    default per architecture preset (see :class:`RunConfig`).
    """

    seed: int = 0
    batch_size: int = 64  # per rank
    epochs: int = 600  # an epoch = (dataset size // global batch) steps
    max_steps: int | None = None  # stop earlier (demos, tests); None = epochs * steps_per_epoch
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_epochs: int = 100  # lr x lr_decay_factor every N epochs; 0 = never
    lr_decay_factor: float = 0.5
    caption_mode: CaptionMode | None = None  # per preset: paper mean4 (TF), pytorch single
    g_step_fakes: GStepFakes | None = (
        None  # per preset: pytorch reuse D-step fakes, paper redraw z/eps
    )
    # D's batches: "separate" real and fake passes (the references: own BatchNorm statistics
    # each) or one "joint" [real; fake] pass in both the D and the G step (not in the paper)
    d_batch: DBatch = "separate"
    # Differentiable augmentation of every D input, real and fake (DiffAugment; not in the
    # paper): geometric policies only, "translation" and/or "cutout" (stackgan.augment)
    d_augment: tuple[str, ...] = ()
    frozen_stage1_bn: FrozenBn = "eval"  # "train" reproduces the reference's BN drift in Stage-II
    # Stage-II stacks on the Stage-I file's EMA generator (G_ema, when it has one) instead of
    # its G (not in the paper, which keeps no EMA)
    stage1_ema: bool = False
    # bf16 autocast (CPU/GPU), fp16 + GradScaler (CPU/GPU), or "auto": bf16 where the device
    # computes it natively, else fp32 (stackgan.runtime.resolve_amp)
    amp: Amp = "fp32"
    bn: BnMode = "per_rank"  # sync = SyncBatchNorm (GPU only)
    channels_last: bool = False
    compile: bool = False  # torch.compile G and D
    ema_beta: float | None = None  # EMA of G (None = off), e.g. 0.999
    # BatchNorm statistics of G_ema: "copy" G's running statistics (StackGAN-v2/AttnGAN), or
    # "standing": recompute them for the EMA weights before every grid, evaluation and the file
    ema_bn: EmaBn = "copy"
    deterministic: bool = False  # torch.use_deterministic_algorithms + fixed cuDNN
    num_workers: int = 2  # data-loader processes per rank (part of the data stream's identity)
    shuffle_buffer: int = 1000
    log_every: int = 10  # steps between metric logs
    sample_every: int = 500  # steps between sample grids (0 = off)
    grid_captions: int = 8  # rows of the training sample grid
    grid_samples: int = 4  # noise samples per caption in the grid
    eval_every: int = 0  # steps between in-training evaluations on test captions (0 = off)
    eval_captions: int = 250  # test captions of the in-training evaluation
    eval_samples_per_caption: int = 4  # noise draws per caption (diversity needs >= 2)
    eval_batch_size: int = 50  # generation chunk of the in-training evaluation
    checkpoint_every_minutes: float = 10.0  # wall-clock checkpoint interval (0 = off)
    checkpoint_every_steps: int = 0  # step checkpoint interval (0 = off)
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _check(
            self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1 or null"
        )
        _check(self.lr_g > 0 and self.lr_d > 0, "train.lr_g/lr_d", "learning rates must be > 0")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "train.betas",
            f"expected two values in [0, 1), got {self.betas}",
        )
        _check(self.lr_decay_epochs >= 0, "train.lr_decay_epochs", "must be >= 0")
        _check(0 < self.lr_decay_factor <= 1, "train.lr_decay_factor", "must be in (0, 1]")
        _check(
            self.ema_beta is None or 0 < self.ema_beta < 1,
            "train.ema_beta",
            "must be in (0, 1) or null",
        )
        _check(
            self.d_batch in get_args(DBatch),
            "train.d_batch",
            f"expected one of {get_args(DBatch)}, got {self.d_batch!r}",
        )
        _check(
            all(p in AUGMENT_POLICIES for p in self.d_augment)
            and len(set(self.d_augment)) == len(self.d_augment),
            "train.d_augment",
            f"expected distinct names from {list(AUGMENT_POLICIES)}, got {list(self.d_augment)}",
        )
        _check(
            self.ema_bn in get_args(EmaBn),
            "train.ema_bn",
            f"expected one of {get_args(EmaBn)}, got {self.ema_bn!r}",
        )
        _check(self.num_workers >= 0, "train.num_workers", "must be >= 0")
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        _check(
            self.sample_every >= 0 and self.checkpoint_every_steps >= 0,
            "train.sample_every",
            "must be >= 0",
        )
        _check(self.checkpoint_every_minutes >= 0, "train.checkpoint_every_minutes", "must be >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        _check(self.eval_every >= 0, "train.eval_every", f"must be >= 0, got {self.eval_every}")
        _check(
            self.eval_captions >= 1 and self.eval_samples_per_caption >= 1,
            "train.eval_captions",
            "eval_captions and eval_samples_per_caption must be >= 1",
        )
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        _check(
            self.grid_captions >= 1 and self.grid_samples >= 1,
            "train.grid_captions",
            "must be >= 1",
        )


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """The evaluation protocol and its inputs (the pipeline's ``eval`` section; the defaults of
    ``stackgan evaluate`` come from here too).

    The defaults are the paper protocol: 10 captions per test image (29,330 samples on CUB),
    IS over 10 splits, KID over 100 subsets of 1,000, the EMA generator when the file has one.
    """

    stages: tuple[int, ...] = (1, 2)  # stages the pipeline evaluates
    captions_per_image: int = 10
    max_images: int | None = None  # cap on test images (None = all)
    batch_size: int = 64
    seed: int = 100
    use_ema: bool = True  # evaluate G_ema when the network file holds one
    # generate in the channels_last layout: about 1.3x faster on CPU (docs/benchmarks.md);
    # other float rounding, so the images differ from NCHW ones in the last bits
    channels_last: bool = False
    inception_weights: str | None = None  # local pt_inception-2015-12-05-6726825d.pth
    inception_sha256: str | None = None
    cub_classifier: str | None = None  # CUB-fine-tuned IS classifier (state dict)
    require_metrics: bool = False  # missing weights or real statistics are errors, not skips
    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    grid_captions: int = 6
    grid_samples: int = 4
    conditional_accuracy: bool = False  # attribute accuracy (synthetic twin only)
    classifier_epochs: int = 100  # training of the twin attribute classifier

    def __post_init__(self) -> None:
        _check(
            all(s in (1, 2) for s in self.stages) and len(set(self.stages)) == len(self.stages),
            "eval.stages",
            f"expected distinct values from [1, 2], got {list(self.stages)}",
        )
        _check(
            1 <= self.captions_per_image <= 10,
            "eval.captions_per_image",
            f"must be in [1, 10], got {self.captions_per_image}",
        )
        _check(
            self.max_images is None or self.max_images >= 1,
            "eval.max_images",
            "must be >= 1 or null",
        )
        for key in (
            "batch_size",
            "is_splits",
            "kid_subsets",
            "kid_subset_size",
            "grid_captions",
            "grid_samples",
            "classifier_epochs",
        ):
            _check(
                getattr(self, key) >= 1, f"eval.{key}", f"must be >= 1, got {getattr(self, key)}"
            )


@dataclass(frozen=True, kw_only=True, eq=False)
class RunConfig(_ResolvedEquality):
    """Everything ``stackgan train`` needs besides paths: model, loss, training, stage."""

    stage: int
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(self.stage in (1, 2), "stage", f"must be 1 or 2, got {self.stage}")
        _check(
            self.loss.contrastive == 0 or self.model.d_projection,
            "loss.contrastive",
            "needs model.d_projection: true (it scores pairs with D's projection term)",
        )
        _check(
            self.loss.mode_seeking == 0 or self.g_step_fakes == "redraw",
            "loss.mode_seeking",
            "needs train.g_step_fakes: redraw (the G step draws its own fakes twice)",
        )
        _check(
            self.loss.text_interpolation == 0 or self.g_step_fakes == "redraw",
            "loss.text_interpolation",
            "needs train.g_step_fakes: redraw (the G step draws fakes for the midpoints)",
        )

    @property
    def caption_mode(self) -> CaptionMode:
        """``train.caption_mode`` as given, else mean4 (paper) / single (pytorch)."""
        if self.train.caption_mode is not None:
            return self.train.caption_mode
        return "mean4" if self.model.arch == "paper" else "single"

    @property
    def g_step_fakes(self) -> GStepFakes:
        """``train.g_step_fakes`` as given, else redraw (paper) / reuse (pytorch)."""
        if self.train.g_step_fakes is not None:
            return self.train.g_step_fakes
        return "redraw" if self.model.arch == "paper" else "reuse"

    def _resolved_fields(self) -> dict[str, Any]:
        return {"train": {"caption_mode": self.caption_mode, "g_step_fakes": self.g_step_fakes}}

    def for_its_stage(self) -> RunConfig:
        """This config with the fields that its stage never reads at their defaults (in a
        Stage-I config: :data:`STAGE2_ONLY_FIELDS`), so that changing a Stage-II option
        changes, and reruns, Stage-II alone."""
        if self.stage != 1:
            return self
        reset = {
            section: dataclasses.replace(
                getattr(self, section),
                **{k: getattr(default, k) for k in STAGE2_ONLY_FIELDS[section]},
            )
            for section, default in (("model", ModelConfig()), ("loss", LossConfig()))
        }
        return dataclasses.replace(self, **reset)

    @classmethod
    def from_yaml(cls, path: str) -> RunConfig:
        """Load and validate a run config file (unknown keys are errors)."""
        import yaml

        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        try:
            return from_dict(cls, data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err


# Options that only Stage-II reads (a Stage-I run config carries their defaults)
STAGE2_ONLY_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("stage2_skip", "stage2_zero_init", "stage2_skip_base", "stage2_exact_consistency"),
    "loss": ("stage_consistency", "stage1_critic"),
}


# --------------------------------------------------------------------------- helpers


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a (simple) type hint and coerce ints to floats."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: got {value!r}, expected {hint}")
    if origin is Literal:
        _check(
            value in get_args(hint), key, f"expected one of {list(get_args(hint))}, got {value!r}"
        )
        return value
    if dataclasses.is_dataclass(hint):
        _check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return from_dict(hint, value, prefix=key)
    if origin in (list, tuple):
        _check(isinstance(value, list | tuple), key, f"expected a list, got {value!r}")
        (inner, *_rest) = get_args(hint) or (Any,)
        return origin(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"expected a number, got {value!r}",
        )
        return float(value)
    if hint is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"expected an integer, got {value!r}",
        )
        return value
    if hint is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if hint is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad types."""
    data = dict(data or {})
    hints = _resolve_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    where = prefix or cls.__name__
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # missing required keys
        raise ConfigError(f"{where}: {err}") from err


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (tuples become lists, for YAML/JSON), with every
    per-preset option written out as resolved (so saved configs state what ran)."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            out = {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
            for key, value in getattr(v, "_resolved_fields", dict)().items():
                out[key] = {**out[key], **value} if isinstance(value, dict) else value
            return out
        if isinstance(v, tuple | list):
            return [convert(x) for x in v]
        return v

    return convert(obj)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


__all__ = [
    "ConfigError",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "field",
    "flatten",
    "from_dict",
    "to_dict",
]
