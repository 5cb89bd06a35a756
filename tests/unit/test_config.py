"""Per-preset defaults are resolved on read and on write, never written back."""

from __future__ import annotations

import dataclasses

from stackgan.config import ModelConfig, RunConfig, TrainConfig, from_dict, to_dict


def test_replace_of_the_arch_re_resolves_the_preset_defaults():
    paper = ModelConfig()
    assert (paper.resolved_ca_nonlinearity, paper.resolved_uncond_head) == ("leaky_relu", False)
    pytorch = dataclasses.replace(paper, arch="pytorch", d_text_dim=paper.cond_dim)
    assert (pytorch.resolved_ca_nonlinearity, pytorch.resolved_uncond_head) == ("relu", True)
    assert paper.ca_nonlinearity is None and paper.uncond_head is None  # nothing written back

    run = RunConfig(stage=1)
    assert (run.caption_mode, run.g_step_fakes) == ("mean4", "redraw")
    switched = dataclasses.replace(run, model=pytorch)
    assert (switched.caption_mode, switched.g_step_fakes) == ("single", "reuse")
    assert run.train.caption_mode is None and run.train.g_step_fakes is None


def test_given_values_win_over_the_preset():
    model = ModelConfig(arch="pytorch", d_text_dim=128, ca_nonlinearity="leaky_relu")
    assert model.resolved_ca_nonlinearity == "leaky_relu"
    assert ModelConfig(uncond_head=True).resolved_uncond_head is True
    run = RunConfig(stage=2, train=TrainConfig(caption_mode="single", g_step_fakes="reuse"))
    assert (run.caption_mode, run.g_step_fakes) == ("single", "reuse")


def test_to_dict_writes_what_ran_and_reads_back_the_same():
    run = RunConfig(stage=1, model=ModelConfig(arch="pytorch", d_text_dim=128))
    data = to_dict(run)
    assert data["model"]["ca_nonlinearity"] == "relu" and data["model"]["uncond_head"] is True
    assert data["train"]["caption_mode"] == "single" and data["train"]["g_step_fakes"] == "reuse"
    again = from_dict(RunConfig, data)
    assert to_dict(again) == data
    assert (again.caption_mode, again.model.resolved_ca_nonlinearity) == ("single", "relu")


def test_configs_are_equal_when_they_resolve_to_the_same_values():
    assert ModelConfig() == ModelConfig(ca_nonlinearity="leaky_relu", uncond_head=False)
    assert hash(ModelConfig()) == hash(ModelConfig(ca_nonlinearity="leaky_relu"))
    assert ModelConfig() != ModelConfig(ca_nonlinearity="relu")
    assert RunConfig(stage=1) == RunConfig(stage=1, train=TrainConfig(caption_mode="mean4"))
    assert RunConfig(stage=1) != RunConfig(stage=2)
    assert RunConfig(stage=1) != RunConfig(stage=1, train=TrainConfig(caption_mode="single"))


def test_contrastive_needs_the_projection_d_and_a_non_negative_weight():
    import pytest

    from stackgan.config import ConfigError

    with pytest.raises(ConfigError, match=r"loss\.contrastive.*d_projection"):
        from_dict(RunConfig, {"stage": 1, "loss": {"contrastive": 1.0}})
    with pytest.raises(ConfigError, match=r"loss\.contrastive.*>= 0"):
        from_dict(RunConfig, {"stage": 1, "loss": {"contrastive": -1.0}})
    cfg = from_dict(
        RunConfig, {"stage": 1, "loss": {"contrastive": 1.0}, "model": {"d_projection": True}}
    )
    assert cfg.loss.contrastive == 1.0


def test_mode_seeking_needs_the_redrawn_g_step_fakes():
    import pytest

    from stackgan.config import ConfigError

    with pytest.raises(ConfigError, match=r"loss\.mode_seeking.*redraw"):
        from_dict(
            RunConfig,
            {"stage": 1, "loss": {"mode_seeking": 1.0}, "train": {"g_step_fakes": "reuse"}},
        )
    with pytest.raises(ConfigError, match=r"loss\.mode_seeking.*redraw"):
        from_dict(
            RunConfig, {"stage": 1, "loss": {"mode_seeking": 1.0}, "model": {"arch": "pytorch"}}
        )
    cfg = from_dict(RunConfig, {"stage": 1, "loss": {"mode_seeking": 1.0}})  # paper: redraw
    assert cfg.g_step_fakes == "redraw"


def test_text_interpolation_is_a_fraction_of_the_redrawn_g_batch():
    import pytest

    from stackgan.config import ConfigError

    for bad in (-0.1, 0.6):
        with pytest.raises(ConfigError, match=r"loss\.text_interpolation.*\[0, 0\.5\]"):
            from_dict(RunConfig, {"stage": 1, "loss": {"text_interpolation": bad}})
    with pytest.raises(ConfigError, match=r"loss\.text_interpolation.*redraw"):
        from_dict(
            RunConfig,
            {"stage": 1, "loss": {"text_interpolation": 0.5}, "train": {"g_step_fakes": "reuse"}},
        )
    assert from_dict(RunConfig, {"stage": 1}).loss.text_interpolation == 0.0  # paper: off


def test_r1_gamma_is_a_non_negative_weight_and_off_in_the_paper_preset():
    import pytest

    from stackgan.config import ConfigError

    with pytest.raises(ConfigError, match=r"loss\.r1_gamma.*>= 0"):
        from_dict(RunConfig, {"stage": 1, "loss": {"r1_gamma": -1.0}})
    assert from_dict(RunConfig, {"stage": 1}).loss.r1_gamma == 0.0
    assert from_dict(RunConfig, {"stage": 2, "loss": {"r1_gamma": 0.5}}).loss.r1_gamma == 0.5
