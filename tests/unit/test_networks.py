"""StackGAN networks: parameter counts, shapes, conditioning, init, autocast, channels_last."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stackgan.config import ConfigError, ModelConfig
from stackgan.networks import (
    CondAugment,
    DOutput,
    Stage1Discriminator,
    Stage1Generator,
    Stage2Generator,
    build_networks,
    count_params,
    d_condition,
    init_weights,
)
from stackgan.networks.blocks import (
    Bottleneck,
    UncondLogits,
    UpBlock,
    is_channels_last,
    set_fused_upsampling,
)
from stackgan.networks.stage2 import skip_base

ARCHES = ("paper", "pytorch")

# Acceptance numbers of the spec (section 3.5), trainable params at ModelConfig defaults.
EXPECTED_PARAMS = {
    ("pytorch", 1): (10_301_248, 5_715_713),
    ("paper", 1): (14_264_192, 4_029_824),
    ("pytorch", 2): (26_290_080, 71_269_122),
    ("paper", 2): (26_290_080, 48_603_520),
}

TINY = {"gf_dim": 16, "df_dim": 8, "cond_dim": 16, "d_text_dim": 16, "text_dim": 32, "z_dim": 8}


def tiny_cfg(arch: str, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, **{**TINY, **kw})


def cond_for(cfg: ModelConfig, emb: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    return d_condition(cfg, emb, mu)


@pytest.mark.parametrize(("arch", "stage"), list(EXPECTED_PARAMS))
def test_parameter_counts_match_the_references(arch, stage):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        G, D = build_networks(ModelConfig(arch=arch), stage)
    assert (count_params(G), count_params(D)) == EXPECTED_PARAMS[(arch, stage)]


def test_count_params_trainable_only_and_buffers_excluded():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))  # 16 + 8 params, 9 buffer values
    assert count_params(net) == 24
    net[0].requires_grad_(False)
    assert count_params(net) == 8
    assert count_params(net, trainable_only=False) == 24


@pytest.mark.parametrize("arch", ARCHES)
def test_stage1_shapes_and_wrong_pairs(arch):
    torch.manual_seed(0)
    cfg = tiny_cfg(arch)
    G, D = build_networks(cfg, 1)
    B = 4
    emb, z = torch.randn(B, cfg.text_dim), torch.randn(B, cfg.z_dim)
    img, mu, logvar = G(emb, z)
    assert img.shape == (B, 3, 64, 64) and img.dtype == torch.float32
    assert img.abs().max() <= 1.0
    assert mu.shape == logvar.shape == (B, cfg.cond_dim)
    cond = cond_for(cfg, emb, mu)
    assert cond.shape == (B, cfg.text_dim if arch == "paper" else cfg.cond_dim)
    for n_wrong in (B - 1, B):
        out = D(img, cond, cond[:n_wrong])
        assert isinstance(out, DOutput)
        assert out.logits.shape == (B,) and out.wrong_logits.shape == (n_wrong,)
        assert out.uncond_logits is None
    out = D(img, cond)
    assert out.wrong_logits is None and out.uncond_logits is None


@pytest.mark.parametrize("arch", ARCHES)
def test_stage2_shapes_and_uncond_head_per_preset(arch):
    torch.manual_seed(0)
    cfg = tiny_cfg(arch)
    G, D = build_networks(cfg, 2)
    B = 3
    emb = torch.randn(B, cfg.text_dim)
    low = torch.rand(B, 3, 64, 64) * 2 - 1
    img, mu, logvar = G(low, emb)
    assert img.shape == (B, 3, 256, 256) and img.abs().max() <= 1.0
    assert mu.shape == logvar.shape == (B, cfg.cond_dim)
    cond = cond_for(cfg, emb, mu)
    out = D(img, cond, cond[1:])
    assert out.logits.shape == (B,) and out.wrong_logits.shape == (B - 1,)
    if arch == "pytorch":  # the preset default: PT Stage-II D has the extra head
        assert out.uncond_logits.shape == (B,)
    else:
        assert out.uncond_logits is None
    assert not any(isinstance(m, Stage1Generator) for m in G.modules())


@pytest.mark.parametrize(("arch", "flag"), [("paper", True), ("pytorch", False)])
def test_uncond_head_flag_is_honoured_for_either_arch(arch, flag):
    cfg = tiny_cfg(arch, uncond_head=flag)
    default = tiny_cfg(arch)
    _, D = build_networks(cfg, 2)
    _, D_default = build_networks(default, 2)
    heads = [m for m in D.modules() if isinstance(m, UncondLogits)]
    assert len(heads) == int(flag)
    head_params = 8 * cfg.df_dim * 16 + (arch == "pytorch")  # 4x4 conv 8d -> 1 (+bias)
    delta = count_params(D) - count_params(D_default)
    assert delta == (head_params if flag else -head_params)
    cond = torch.randn(2, cfg.text_dim if arch == "paper" else cfg.cond_dim)
    out = D(torch.randn(2, 3, 256, 256), cond)
    assert (out.uncond_logits is not None) == flag


@pytest.mark.parametrize("arch", ARCHES)
def test_wrong_logits_pair_image_rows_with_wrong_condition_rows(arch):
    """Eval-mode BN makes rows independent, so the shared-feature wrong pass must equal a
    plain pass on the first B' images with the wrong conditions."""
    torch.manual_seed(1)
    cfg = tiny_cfg(arch)
    _, D = build_networks(cfg, 1)
    D.eval()
    B = 4
    img = torch.randn(B, 3, 64, 64)
    cond = torch.randn(B, cfg.text_dim if arch == "paper" else cfg.cond_dim)
    out = D(img, cond, cond[1:])
    ref = D(img[: B - 1], cond[1:])
    torch.testing.assert_close(out.wrong_logits, ref.logits)
    torch.testing.assert_close(D(img, cond, cond).wrong_logits, out.logits)
    with pytest.raises(ValueError, match="wrong_cond has 5 rows"):
        D(img, cond, torch.randn(B + 1, cond.shape[1]))


@pytest.mark.parametrize("arch", ARCHES)
def test_shared_head_scores_wrong_pairs_in_the_matching_pairs_batch(arch):
    """shared_head=True: one head call over [matching; mismatched] pairs. In eval mode (no
    batch statistics) it equals the separate calls; in train mode the matching logits then
    depend on the mismatched rows through the shared BatchNorm statistics."""
    torch.manual_seed(2)
    cfg = tiny_cfg(arch)
    _, D = build_networks(cfg, 1)
    B = 6
    img = torch.randn(B, 3, 64, 64)
    cond = torch.randn(B, cfg.text_dim if arch == "paper" else cfg.cond_dim)
    wrong = cond.roll(1, 0)
    D.eval()
    sep, shared = D(img, cond, wrong), D(img, cond, wrong, shared_head=True)
    torch.testing.assert_close(shared.logits, sep.logits)
    torch.testing.assert_close(shared.wrong_logits, sep.wrong_logits)
    D.train()
    feats = D.encode(img)
    ref = D.cond_head(torch.cat([feats, feats]), torch.cat([cond, wrong]))
    shared = D(img, cond, wrong, shared_head=True)
    torch.testing.assert_close(torch.cat([shared.logits, shared.wrong_logits]), ref)
    assert not torch.allclose(shared.logits, D(img, cond, wrong).logits)


@pytest.mark.parametrize(("arch", "stage"), [(a, s) for a in ARCHES for s in (1, 2)])
def test_projection_term_adds_text_feature_inner_product(arch, stage):
    """model.d_projection: logit = head logit + <W cond, 4x4-averaged features>, with W one
    extra [feat_ch x cond_in] matrix; off by default (the parameter counts above)."""
    torch.manual_seed(3)
    plain, proj = tiny_cfg(arch), tiny_cfg(arch, d_projection=True)
    _, D0 = build_networks(plain, stage)
    _, D1 = build_networks(proj, stage)
    head = D1.cond_head
    feat_ch = head.logit.in_channels
    cond_in = head.projection.in_features
    assert count_params(D1) - count_params(D0) == feat_ch * cond_in
    D1.eval()
    size = 64 * (1 if stage == 1 else 4)
    img, cond = torch.randn(3, 3, size, size), torch.randn(3, cond_in)
    feats = D1.encode(img)
    base = head.logit(
        head.joint(
            torch.cat(
                [
                    feats,
                    head.text_fc(cond)[:, :, None, None].expand(-1, -1, 4, 4)
                    if head.text_fc is not None
                    else cond[:, :, None, None].expand(-1, -1, 4, 4),
                ],
                1,
            )
        )
    ).flatten()
    want = base + (feats.mean((2, 3)) * (cond @ head.projection.weight.T)).sum(1)
    torch.testing.assert_close(D1(img, cond).logits, want)
    assert D0.cond_head.projection is None


@pytest.mark.parametrize("arch", ARCHES)
def test_stage2_skip_refines_the_upsampled_stage1_image(arch):
    """model.stage2_skip: out = tanh(decoder pre-activation + atanh(bilinear up(Stage-I))),
    no extra parameters; with a zero decoder output G returns the upsampled Stage-I image."""
    torch.manual_seed(4)
    G0, _ = build_networks(tiny_cfg(arch), 2)
    G1, _ = build_networks(tiny_cfg(arch, stage2_skip=True), 2)
    assert count_params(G0) == count_params(G1)
    G1.eval()
    low, emb = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(2, tiny_cfg(arch).text_dim)
    torch.manual_seed(5)
    out, _, _ = G1(low, emb)
    torch.manual_seed(5)
    pre = G1.decode[:-1](
        G1.residual(
            G1.joint(
                torch.cat(
                    [G1.encode(low), G1.ca(emb)[0][:, :, None, None].expand(-1, -1, 16, 16)], 1
                )
            )
        )
    )
    up = F.interpolate(low, size=256, mode="bilinear")
    torch.testing.assert_close(out, torch.tanh(pre + torch.atanh(up.clamp(-0.99, 0.99))))
    last = G1.decode[-2]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    out, _, _ = G1(low, emb)
    torch.testing.assert_close(out, up.clamp(-0.99, 0.99), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHES)
def test_stage2_zero_init_starts_as_the_upsampled_stage1_image(arch):
    """model.stage2_zero_init: the untrained refining G returns exactly the (clamped)
    bilinear upsample of its Stage-I input for any caption, and only its last decoder conv
    differs from the default init (same random draws for every other weight)."""
    torch.manual_seed(7)
    G_default, _ = build_networks(tiny_cfg(arch, stage2_skip=True), 2)
    torch.manual_seed(7)
    G_zero, _ = build_networks(tiny_cfg(arch, stage2_skip=True, stage2_zero_init=True), 2)
    last = {f"decode.{len(G_zero.decode) - 2}.weight", f"decode.{len(G_zero.decode) - 2}.bias"}
    zero_state, default_state = G_zero.state_dict(), G_default.state_dict()
    for name, tensor in zero_state.items():
        if name in last:
            assert not tensor.any(), name
        else:
            torch.testing.assert_close(tensor, default_state[name], rtol=0, atol=0)
    low = torch.rand(3, 3, 64, 64) * 2 - 1  # train mode: BN normalises as in training
    out, _, _ = G_zero.train()(low, torch.randn(3, tiny_cfg(arch).text_dim))
    up = F.interpolate(low, size=256, mode="bilinear").clamp(-0.99, 0.99)
    torch.testing.assert_close(out, up, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(skip_base(low, 256).clamp(-0.99, 0.99), up, rtol=0, atol=0)
    default_out, _, _ = G_default.train()(low, torch.randn(3, tiny_cfg(arch).text_dim))
    assert (default_out - up).abs().mean() > 1e-2  # the default init does recolour it
    with pytest.raises(ConfigError, match=r"model\.stage2_zero_init"):
        tiny_cfg(arch, stage2_zero_init=True)


def test_projected_skip_base_reads_back_as_its_stage1_image():
    """model.stage2_skip_base: projected: downsampling the base (antialiased bilinear,
    the protocol's read-back) returns the Stage-I image, where the bilinear base returns a
    blurred one, and it is the least change of the bilinear base that does (no component
    in the read-back's null space); a zero-initialised G starts exactly at the (clamped)
    projected base."""
    from scipy.linalg import null_space

    from stackgan.networks.stage2 import downsample

    # the read-back along one axis, from images constant along the other (it is separable)
    basis = torch.eye(256, dtype=torch.float64)[:, None, :, None].expand(256, 1, 256, 256)
    down = downsample(basis.contiguous(), 64)[:, 0, :, 0].T  # [64, 256]
    null = torch.from_numpy(null_space(down.numpy()))  # [256, 192], down @ null = 0
    torch.manual_seed(3)
    smooth = F.interpolate(torch.rand(4, 3, 16, 16) * 1.8 - 0.9, size=64, mode="bilinear")
    for low in (smooth, torch.rand(4, 3, 64, 64) * 1.8 - 0.9):
        plain = (downsample(skip_base(low, 256), 64) - low).abs().mean()
        projected = skip_base(low, 256, "projected")
        assert plain > 1e-2
        torch.testing.assert_close(downsample(projected, 64), low, atol=2e-5, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as in a bf16 training step
            torch.testing.assert_close(skip_base(low, 256, "projected"), projected)
        # the least change: the correction has no part in the null space of the read-back
        correction = (projected - skip_base(low, 256)).double()
        assert float((null.T @ correction).abs().max()) < 1e-4
        assert float((correction @ null).abs().max()) < 1e-4
    cfg = tiny_cfg("paper", stage2_skip=True, stage2_zero_init=True, stage2_skip_base="projected")
    G, _ = build_networks(cfg, 2)
    out, _, _ = G.train()(smooth, torch.randn(4, cfg.text_dim))
    want = skip_base(smooth, 256, "projected").clamp(-0.99, 0.99)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert (out - skip_base(smooth, 256).clamp(-0.99, 0.99)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match=r"model\.stage2_skip_base"):
        tiny_cfg("paper", stage2_skip_base="projected")
    with pytest.raises(ConfigError, match=r"model\.stage2_skip_base"):
        tiny_cfg("paper", stage2_skip=True, stage2_skip_base="nearest")
    with pytest.raises(ValueError, match="skip base"):
        skip_base(smooth, 256, "nearest")  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ARCHES)
def test_text_film_modulates_every_up_block_with_the_condition(arch):
    """model.g_text_film: after each up-sampling block h -> h * (1 + gamma(c)) + beta(c);
    off, the network and its state dict are the paper's; zero FiLM maps give the plain G."""
    plain, _ = build_networks(tiny_cfg(arch), 1)
    film, _ = build_networks(tiny_cfg(arch, g_text_film=True), 1)
    ups = [i for i, m in enumerate(film.body) if isinstance(m, UpBlock)]
    assert sorted(int(k) for k in film.film) == ups and len(ups) >= 3
    assert not list(plain.film.parameters())
    extra = set(film.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("film.") for k in extra)
    widths = {k: m.affine.out_features // 2 for k, m in film.film.items()}
    assert widths == {str(i): film.body[i][1][0].out_channels for i in ups}
    film.load_state_dict(plain.state_dict(), strict=False)
    film.eval(), plain.eval()
    emb, z = torch.randn(3, TINY["text_dim"]), torch.randn(3, TINY["z_dim"])
    torch.manual_seed(1)
    with_film = film(emb, z)[0]
    # Recompute by hand: the same blocks, the FiLM applied after each up block.
    torch.manual_seed(1)
    c, _, _ = film.ca(emb)
    zc = torch.cat([c, z] if arch == "paper" else [z, c], 1)
    h = film.fc(zc).reshape(-1, film.ngf, 4, 4)
    for i, block in enumerate(film.body):
        h = block(h)
        if i in ups:
            gamma, beta = film.film[str(i)].affine(c).chunk(2, dim=1)
            h = h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
    torch.testing.assert_close(with_film, h)
    for m in film.film.values():
        nn.init.zeros_(m.affine.weight), nn.init.zeros_(m.affine.bias)
    torch.manual_seed(1)
    out_zero = film(emb, z)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(out_zero, plain(emb, z)[0])
    assert not torch.allclose(with_film, out_zero)


OPTION_SETS = {
    "plain": {},
    "film": {"g_text_film": True},
    "film_only_projection_only": {
        "g_text_film": True,
        "g_text_input": False,
        "d_projection": True,
        "d_projection_only": True,
    },
}


@pytest.mark.parametrize("arch", ARCHES)
def test_without_text_input_the_text_reaches_stage1_g_only_through_film(arch):
    """model.g_text_input: false: the input FC sees z alone; with the FiLM maps zeroed the
    image no longer depends on the caption, with them it does."""
    G, _ = build_networks(tiny_cfg(arch, g_text_film=True, g_text_input=False), 1)
    first = G.fc[0]
    assert first.in_features == TINY["z_dim"]
    G.eval()
    z = torch.randn(3, TINY["z_dim"])
    embs = [torch.randn(3, TINY["text_dim"]) for _ in range(2)]
    outs = []
    for emb in embs:
        torch.manual_seed(1)  # the same CA noise
        outs.append(G(emb, z)[0])
    assert not torch.allclose(outs[0], outs[1])
    for m in G.film.values():
        nn.init.zeros_(m.affine.weight), nn.init.zeros_(m.affine.bias)
    zeroed = [G(emb, z)[0] for emb in embs]
    torch.testing.assert_close(zeroed[0], zeroed[1])
    with pytest.raises(ConfigError, match=r"model\.g_text_input.*g_text_film"):
        tiny_cfg(arch, g_text_input=False)


@pytest.mark.parametrize(("arch", "stage"), [(a, s) for a in ARCHES for s in (1, 2)])
@pytest.mark.parametrize("options", sorted(OPTION_SETS))
def test_every_parameter_is_used_in_forward(arch, stage, options):
    """DDP with find_unused_parameters=False needs a gradient for every parameter."""
    torch.manual_seed(0)
    cfg = tiny_cfg(arch, **OPTION_SETS[options])
    G, D = build_networks(cfg, stage)
    B, size = 2, 64 * (1 if stage == 1 else 4)
    emb = torch.randn(B, cfg.text_dim)
    if stage == 1:
        img, mu, logvar = G(emb, torch.randn(B, cfg.z_dim))
    else:
        img, mu, logvar = G(torch.randn(B, 3, 64, 64), emb)
    (img.mean() + mu.mean() + logvar.mean()).backward()
    out = D(torch.randn(B, 3, size, size), cond_for(cfg, emb, mu), cond_for(cfg, emb, mu)[1:])
    sum(o.sum() for o in out if o is not None).backward()
    for net in (G, D):
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing


def test_paper_and_pytorch_discriminator_heads_differ_as_in_the_references():
    paper, pt = (build_networks(tiny_cfg(a), 1)[1] for a in ARCHES)
    assert isinstance(paper.cond_head.text_fc[0], nn.Linear)
    assert paper.cond_head.text_fc[0].in_features == TINY["text_dim"]
    assert isinstance(paper.cond_head.text_fc[1], nn.LeakyReLU)
    assert paper.cond_head.joint[0].kernel_size == (1, 1)
    assert pt.cond_head.text_fc is None and pt.cond_head.joint[0].kernel_size == (3, 3)
    assert pt.cond_head.joint[0].in_channels == 8 * TINY["df_dim"] + TINY["cond_dim"]
    assert sum(isinstance(m, Bottleneck) for m in paper.modules()) == 1
    assert not any(isinstance(m, Bottleneck) for m in pt.modules())
    with pytest.raises(ValueError, match="must equal cond_in_dim"):
        Stage1Discriminator(df_dim=8, cond_in_dim=16, code_dim=8, arch="pytorch")
    with pytest.raises(ValueError, match="unknown arch"):
        Stage2Generator(
            text_dim=8, cond_dim=8, gf_dim=8, r_num=0, arch="tf", ca_nonlinearity="relu"
        )


def test_d_condition_per_preset():
    emb = torch.randn(2, 32)
    mu = torch.randn(2, 16, requires_grad=True) * 1.0
    assert d_condition(tiny_cfg("paper"), emb, mu) is emb
    cond = d_condition(tiny_cfg("pytorch"), emb, mu)
    assert not cond.requires_grad and torch.equal(cond, mu)


# ---------------------------------------------------------------- conditioning augmentation


def test_ca_relu_preset_gives_nonnegative_mu_and_logvar():
    torch.manual_seed(0)
    ca = init_weights(CondAugment(32, 16, "relu"))
    nn.init.normal_(ca.fc.weight, 0.0, 0.5)  # wide enough that the FC output has both signs
    c, mu, logvar = ca(torch.randn(64, 32))
    assert c.shape == mu.shape == logvar.shape == (64, 16)
    assert (mu >= 0).all() and (logvar >= 0).all()
    assert (mu == 0).any() and (logvar == 0).any()  # the ReLU really clipped something


def test_ca_leaky_log_sigma_reading_matches_the_tf_code():
    torch.manual_seed(0)
    ca = CondAugment(32, 16, "leaky_relu", log_sigma=True)
    x = torch.randn(8, 32)
    h = F.leaky_relu(x @ ca.fc.weight.T + ca.fc.bias, 0.2)
    _, mu, logvar = ca(x)
    torch.testing.assert_close(mu, h[:, :16])
    torch.testing.assert_close(logvar, 2 * h[:, 16:])  # logvar = 2 log sigma
    assert (logvar < 0).any()  # LeakyReLU lets negative log sigma through


def test_ca_sampling_is_reparametrized_and_random_in_eval_too(monkeypatch):
    torch.manual_seed(0)
    ca = CondAugment(32, 16, "leaky_relu").eval()
    x = torch.randn(4, 32)
    c1, mu1, lv1 = ca(x)
    c2, mu2, lv2 = ca(x)
    assert torch.equal(mu1, mu2) and torch.equal(lv1, lv2)
    assert not torch.allclose(c1, c2)  # fresh eps per call, also in eval mode
    monkeypatch.setattr(ca, "sample_noise", torch.zeros_like)
    c, mu, _ = ca(x)
    assert torch.equal(c, mu)
    monkeypatch.setattr(ca, "sample_noise", torch.ones_like)
    c, mu, logvar = ca(x)
    torch.testing.assert_close(c, mu + torch.exp(0.5 * logvar))


def test_ca_truncated_noise_option():
    torch.manual_seed(0)
    eps = CondAugment(4, 2, "relu", noise="truncated").sample_noise(torch.empty(20000))
    assert eps.abs().max() <= 2.0
    assert 0.85 < eps.std().item() < 0.91  # std of N(0, 1) truncated at +-2 is 0.880
    with pytest.raises(ValueError, match="unknown CA noise"):
        CondAugment(4, 2, "relu", noise="uniform")


# ---------------------------------------------------------------- init


def test_init_statistics():
    torch.manual_seed(0)
    big = init_weights(nn.Sequential(nn.Conv2d(256, 256, 3), nn.Linear(512, 512)))
    w = big[0].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 5e-4
    assert abs(big[1].weight.std().item() - 0.02) < 5e-4
    assert torch.equal(big[1].bias, torch.zeros(512))
    _, D = build_networks(ModelConfig(arch="paper", df_dim=32), 2)  # many BN channels
    bns = [m for m in D.modules() if isinstance(m, nn.BatchNorm2d)]
    gamma = torch.cat([m.weight.detach() for m in bns])
    beta = torch.cat([m.bias.detach() for m in bns])
    assert gamma.numel() > 3000
    assert abs(gamma.mean().item() - 1.0) < 2e-3 and abs(gamma.std().item() - 0.02) < 2e-3
    assert torch.equal(beta, torch.zeros_like(beta))


@pytest.mark.parametrize("arch", ARCHES)
def test_conv_biases_only_where_the_reference_has_them(arch):
    cfg = tiny_cfg(arch)
    for stage, expected in ((1, 1), (2, 2)):
        G, D = build_networks(cfg, stage)
        assert not [m for m in G.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
        with_bias = [m for m in D.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
        if arch == "paper":
            assert not with_bias
        else:  # the 4x4 stride-4 logit conv(s): cond (+ uncond in Stage-II)
            assert len(with_bias) == expected
            assert all(m.kernel_size == (4, 4) and m.stride == (4, 4) for m in with_bias)
    # the generators' FC: bias in TF (paper), none in PT
    G1 = build_networks(cfg, 1)[0]
    assert (G1.fc[0].bias is not None) == (arch == "paper")


# ---------------------------------------------------------------- precision and memory format


@pytest.mark.parametrize("arch", ARCHES)
def test_bf16_autocast_and_channels_last(arch):
    torch.manual_seed(0)
    cfg = tiny_cfg(arch)
    G1, D1 = build_networks(cfg, 1)
    G2, D2 = build_networks(cfg, 2)
    for net in (G1, D1, G2, D2):
        net.to(memory_format=torch.channels_last)
    B = 2
    emb, z = torch.randn(B, cfg.text_dim), torch.randn(B, cfg.z_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, mu, _ = G1(emb, z)
        out1 = D1(low, cond_for(cfg, emb, mu), cond_for(cfg, emb, mu)[1:])
        high, mu2, _ = G2(low, emb)
        out2 = D2(high, cond_for(cfg, emb, mu2), cond_for(cfg, emb, mu2))
    assert low.dtype == high.dtype == torch.bfloat16
    assert high.shape == (B, 3, 256, 256)
    for out in (out1, out2):
        for t in out:
            if t is not None:
                assert t.dtype == torch.bfloat16 and torch.isfinite(t).all()
    assert out2.wrong_logits.shape == (B,)
    loss = sum(t.float().sum() for t in out2 if t is not None)
    loss.backward()  # backward through channels_last bf16 works
    assert all(p.grad is not None for p in D2.parameters())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_upsampling_matches_the_literal_blocks_in_both_layouts(layout):
    """The fused upsample+conv3x3 equals nearest x2 then conv3x3 (values and gradients),
    and its output keeps the input's layout."""
    torch.manual_seed(0)
    block = UpBlock(6, 4).to(memory_format=layout)
    x = torch.randn(3, 6, 5, 7).contiguous(memory_format=layout).requires_grad_(True)
    outs, grads = [], []
    for fused in (True, False):
        set_fused_upsampling(block, fused)
        block.zero_grad()
        x.grad = None
        y = block(x)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append(y)
        grads.append((x.grad.clone(), block[1][0].weight.grad.clone()))
    assert outs[0].shape == (3, 4, 10, 14)
    assert is_channels_last(outs[0]) == (layout == torch.channels_last)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHES)
def test_a_channels_last_stage1_generator_computes_in_channels_last(arch):
    """Converted with .to(memory_format=channels_last), G1 keeps its activations in that
    layout from the FC on (no per-layer conversions) and computes the same images."""
    torch.manual_seed(0)
    cfg = tiny_cfg(arch)
    G = build_networks(cfg, 1)[0].eval()
    emb, z = torch.randn(2, cfg.text_dim), torch.randn(2, cfg.z_dim)
    with torch.no_grad():
        torch.manual_seed(1)  # the same CA noise draw in both calls
        ref = G(emb, z)[0]
        G.to(memory_format=torch.channels_last)
        seen = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: seen.append(is_channels_last(o)))
            for m in G.body
            if isinstance(m, UpBlock)
        ]
        torch.manual_seed(1)
        out = G(emb, z)[0]
    for h in hooks:
        h.remove()
    assert not is_channels_last(ref) and is_channels_last(out)
    assert seen and all(seen)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_exact_consistency_keeps_the_stage1_image_at_64px_and_adds_detail_above_it():
    """model.stage2_exact_consistency: whatever the refinement, the Stage-II image read back
    at 64 px (the protocol's antialiased bilinear) is its Stage-I image, in fp32 and under
    bf16 autocast; the correction is the least one (nothing in the read-back's null space),
    so the refinement's detail above the 64 px band survives; gradients reach G."""
    from scipy.linalg import null_space

    from stackgan.networks.stage2 import (
        CONSISTENCY_ITERATIONS,
        CONSISTENCY_TOLERANCE,
        CONSISTENCY_TRAIN_ITERATIONS,
        downsample,
        enforce_consistency,
    )

    base = dict(stage2_skip=True, stage2_zero_init=True, stage2_skip_base="projected")
    torch.manual_seed(5)
    free, _ = build_networks(tiny_cfg("paper", **base), 2)
    exact, _ = build_networks(tiny_cfg("paper", stage2_exact_consistency=True, **base), 2)
    last = free.decode[-2]
    with torch.no_grad():  # a small refinement, as after some training
        last.weight.normal_(0.0, 0.02)
    exact.load_state_dict(free.state_dict())
    low = F.interpolate(torch.rand(4, 3, 16, 16) * 1.6 - 0.8, size=64, mode="bilinear")
    emb = torch.randn(4, tiny_cfg("paper").text_dim)
    torch.manual_seed(1)
    y, _, _ = free.train()(low, emb)
    torch.manual_seed(1)
    out, _, _ = exact.train()(low, emb)
    assert (downsample(y, 64) - low).abs().mean() > 1e-3  # the free refinement moved it
    assert out.dtype == torch.float32 and out.abs().max() < 1.0  # nothing clamped here
    torch.testing.assert_close(downsample(out, 64), low, atol=2e-5, rtol=0)
    torch.testing.assert_close(out, enforce_consistency(y, low))
    # the least correction: out - y lies in the row space of the read-back, per axis
    basis = torch.eye(256, dtype=torch.float64)[:, None, :, None].expand(256, 1, 256, 256)
    null = torch.from_numpy(null_space(downsample(basis.contiguous(), 64)[:, 0, :, 0].T.numpy()))
    correction = (out - y).detach().double()
    assert float((null.T @ correction).abs().max()) < 1e-4
    assert float((correction @ null).abs().max()) < 1e-4
    # ... so the detail above 64 px is the refinement's
    detail = (out - enforce_consistency(skip_base(low, 256, "projected"), low)).abs().mean()
    assert detail > 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, _, _ = exact.train()(low, emb)
    assert half.dtype == torch.float32
    torch.testing.assert_close(downsample(half, 64), low, atol=2e-5, rtol=0)
    half.square().mean().backward()
    assert last.weight.grad is None and exact.decode[-2].weight.grad.abs().sum() > 0
    # Where the correction would leave [-1, 1] the clamp cuts it (a Stage-I pixel near +-1
    # beside a sharp edge); the solver's later rounds then bring every read-back pixel
    # within the tolerance, which 10 rounds do not, with the first round's gradient
    # (straight through), and leave channels the clamp did not touch as one step made them.
    torch.manual_seed(2)
    sharp = torch.tanh(3 * F.interpolate(torch.randn(3, 3, 8, 8), size=64, mode="bilinear"))
    start = skip_base(sharp, 256, "projected").clamp(-0.99, 0.99)
    errors = {}
    for n in (1, 10, CONSISTENCY_ITERATIONS):
        leaf = start.clone().requires_grad_(True)
        out = enforce_consistency(leaf, sharp, iterations=n)
        assert out.abs().max() <= 1.0
        errors[n] = float((downsample(out.detach(), 64) - sharp).abs().max())
        (out * torch.linspace(-1, 1, 256)).sum().backward()
        if n == 1:
            one_grad = leaf.grad.clone()
        torch.testing.assert_close(leaf.grad, one_grad)
    assert errors[1] > 100 * CONSISTENCY_TOLERANCE, errors  # a hard case
    assert errors[10] > 2 * CONSISTENCY_TOLERANCE, errors  # ... that 10 rounds leave
    # the solver's own (matrix) read-back stops within the tolerance; F.interpolate's
    # float rounding may differ from it by about 1e-6
    assert errors[CONSISTENCY_ITERATIONS] <= CONSISTENCY_TOLERANCE + 1e-5, errors
    with torch.no_grad():
        solved = enforce_consistency(start, sharp)
    mixed = enforce_consistency(torch.cat([start, y.detach()]), torch.cat([sharp, low]))
    torch.testing.assert_close(mixed[3:], enforce_consistency(y.detach(), low, iterations=1))
    torch.testing.assert_close(mixed[:3], solved)
    # The generator solves to the tolerance in eval mode; in train mode (the fakes D sees)
    # it stops after CONSISTENCY_TRAIN_ITERATIONS rounds
    with torch.no_grad():
        last.weight.normal_(0.0, 0.5)  # a large refinement, which the clamp cuts
    exact.load_state_dict(free.state_dict())
    for training, rounds in ((True, CONSISTENCY_TRAIN_ITERATIONS), (False, None)):
        torch.manual_seed(3)
        raw, _, _ = free.train(training)(sharp, emb[:3])
        torch.manual_seed(3)
        out, _, _ = exact.train(training)(sharp, emb[:3])
        want = enforce_consistency(raw, sharp, *([rounds] if rounds else []))
        torch.testing.assert_close(out, want)
        error = float((downsample(out.detach(), 64) - sharp).abs().max())
        if training:
            assert error > 2 * CONSISTENCY_TOLERANCE, error
        else:
            assert error <= CONSISTENCY_TOLERANCE + 1e-5, error
    # channels_last in, channels_last out (the generators train in that layout)
    cl = enforce_consistency(start.contiguous(memory_format=torch.channels_last), sharp)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, solved)
    with pytest.raises(ConfigError, match=r"model\.stage2_exact_consistency"):
        tiny_cfg("paper", stage2_exact_consistency=True)
