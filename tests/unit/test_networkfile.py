"""The network file record (stackgan.networkfile) and the stacked Stage-II generator."""

from __future__ import annotations

import pytest
import torch

from stackgan.checkpoint import CheckpointError, save
from stackgan.config import ModelConfig, to_dict
from stackgan.networkfile import NETWORK_FORMAT, NetworkFile, read_network, write_network
from stackgan.networks import build_networks
from stackgan.stages import StackedGenerator

TINY = ModelConfig(gf_dim=16, df_dim=8, cond_dim=8, d_text_dim=8, text_dim=32, z_dim=8, r_num=1)


def test_round_trip_keeps_keys_order_and_tensors(tmp_path):
    g = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    net = NetworkFile(
        stage=2,
        step=7,
        model=to_dict(TINY),
        config={"stage": 2},
        G=g,
        G_ema=None,
        provenance={"world_size": 1},
        stage1={"path": "s1.pt", "sha256": "ab", "step": 3},
        stage1_model=to_dict(TINY),
        G1={"w": torch.ones(1)},
    )
    write_network(tmp_path / "n.pt", net)
    raw = torch.load(tmp_path / "n.pt", weights_only=True)
    assert list(raw) == [
        "format",
        "stage",
        "step",
        "model",
        "config",
        "G",
        "G_ema",
        "provenance",
        "stage1",
        "stage1_model",
        "G1",
    ]
    back = read_network(tmp_path / "n.pt")
    assert back.stage == 2 and back.step == 7 and back.stage1 == net.stage1
    assert all(torch.equal(back.G[k], v) for k, v in g.items())
    assert back.generator_weights(use_ema=True)[1] == "G"
    assert back.stage1_model_config() == TINY and back.model_config() == TINY


def test_stage1_file_has_no_stage2_keys_and_old_minimal_files_load(tmp_path):
    d = {"w": torch.randn(2)}
    write_network(tmp_path / "a.pt", NetworkFile(stage=1, model=to_dict(TINY), G={}, D=d))
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert "G1" not in raw and list(raw)[-2:] == ["provenance", "D"]
    assert torch.equal(read_network(tmp_path / "a.pt").discriminator_weights()["w"], d["w"])
    save({"format": NETWORK_FORMAT, "stage": 1, "model": to_dict(TINY), "G": {}}, tmp_path / "b.pt")
    old = read_network(tmp_path / "b.pt")
    assert old.step is None and old.G_ema is None and old.provenance == {}
    with pytest.raises(KeyError):
        old.stage1_weights()
    with pytest.raises(KeyError):
        old.discriminator_weights()
    save({"format": "something-else"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="expected a 'stackgan-network/1' file"):
        read_network(tmp_path / "c.pt")


def test_stacked_generator_is_g1_without_grad_then_g2():
    torch.manual_seed(0)
    g1, _ = build_networks(TINY, 1)
    g2, _ = build_networks(TINY, 2)
    g1.eval()
    g2.eval()
    emb, z = torch.randn(2, TINY.text_dim), torch.randn(2, TINY.z_dim)
    torch.manual_seed(1)
    with torch.no_grad():
        low = g1(emb, z)[0]
    ref = g2(low, emb)
    torch.manual_seed(1)
    (fake, mu, logvar), low2 = StackedGenerator(g1, g2).forward_with_input(emb, z)
    assert torch.equal(low2, low) and not low2.requires_grad
    assert torch.equal(fake, ref[0]) and torch.equal(mu, ref[1]) and torch.equal(logvar, ref[2])
    assert fake.requires_grad  # only the Stage-I part runs without gradient


@pytest.mark.parametrize("stage1_ema", [False, True])
def test_stage2_stacks_on_the_stage1_weights_the_config_names(tmp_path, stage1_ema):
    """train.stage1_ema: Stage-II freezes the Stage-I file's G_ema (else its G), records which,
    and falls back to G for a file without EMA weights."""
    from stackgan.config import RunConfig, TrainConfig
    from stackgan.stages import build_stage

    torch.manual_seed(0)
    g, _ = build_networks(TINY, 1)
    g_ema, _ = build_networks(TINY, 1)  # other random weights
    state, state_ema = g.state_dict(), g_ema.state_dict()
    write_network(
        tmp_path / "s1.pt", NetworkFile(stage=1, model=to_dict(TINY), G=state, G_ema=state_ema)
    )
    write_network(tmp_path / "plain.pt", NetworkFile(stage=1, model=to_dict(TINY), G=state))
    cfg = RunConfig(stage=2, model=TINY, train=TrainConfig(stage1_ema=stage1_ema))
    stage = build_stage(cfg, tmp_path / "s1.pt")
    want = state_ema if stage1_ema else state
    got = stage.frozen_g1.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert stage.extra_payload["stage1"]["weights"] == ("G_ema" if stage1_ema else "G")
    fallback = build_stage(cfg, tmp_path / "plain.pt")
    assert fallback.extra_payload["stage1"]["weights"] == "G"
    assert all(torch.equal(fallback.frozen_g1.state_dict()[k], v) for k, v in state.items())
