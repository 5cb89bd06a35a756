"""GPU acceptance: one command that checks and measures what only a GPU machine can.

Run it whenever a CUDA machine is available (it is sized for about 8 minutes on one
H100-class GPU; every section is time-boxed by --budget-s) and record the Markdown it
writes in docs/benchmarks.md:

    bash bench/gpu_acceptance.sh                   # set up, then run everything on the GPU(s)
    python bench/gpu_acceptance.py --out bench-out/gpu
    python bench/gpu_acceptance.py --dry-run --out /tmp/gpu-dry    # CPU: the plumbing only

Sections (each reports ``ok``, ``failed`` or ``skipped`` with the reason, never aborts the rest):

1. ``environment``: torch, CUDA, the GPUs.
2. ``peak``: measured matmul peak (fp32/TF32, bf16, fp16), the denominators of MFU.
3. ``gpu_tests``: ``pytest -m gpu`` (the CUDA-only tests of the suite).
4. ``agreement``: bf16 and fp16 (loss-scaled) autocast against fp32 on one Stage-I step.
5. ``syncbn``: SyncBatchNorm in a one-process NCCL group gives plain BatchNorm's numbers.
6. ``nccl_vs_gloo`` (2+ GPUs): 2-rank DDP steps under NCCL equal those under gloo.
7. ``throughput``: the ``paper`` arch, Stage-I and Stage-II at batch 64, in fp32, bf16,
   channels_last+bf16, with and without ``torch.compile``: img/s, peak GPU memory, MFU.
8. ``loader``: the training loader's samples/s with N workers against the step rate.
9. ``estimate``: GPU-hours of the full 600 + 600-epoch CUB retrain from the best modes.

``--dry-run`` runs every section on the CPU at toy sizes (sections that need CUDA or
several GPUs say so and are skipped), so CI checks the script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_train import peak_gflops, run_case  # noqa: E402

CUB_TRAIN_IMAGES = 8855  # the paper's training split
PAPER_EPOCHS = 600  # per stage (spec: 600 Stage-I + 600 Stage-II epochs)
MODES = ("fp32", "bf16", "cl+bf16", "compile+bf16", "compile+cl+bf16")


class Skip(Exception):
    """A section that cannot run here (the message says why)."""


# --------------------------------------------------------------------------- sections


def environment(ctx: dict[str, Any]) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "device": ctx["device"],
    }


def peak(ctx: dict[str, Any]) -> dict[str, float]:
    import torch

    size = 256 if ctx["dry_run"] else 8192
    out = {}
    for dtype in ("fp32", "bf16", "fp16"):
        if ctx["dry_run"] and dtype == "fp16":
            continue  # CPU fp16 matmul is emulated: meaningless as a peak
        out[f"{dtype}_gflops"] = round(peak_gflops(dtype, size, 5, ctx["device"]), 1)
    if ctx["device"].startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        out["tf32_gflops"] = round(peak_gflops("fp32", size, 5, ctx["device"]), 1)
        torch.backends.cuda.matmul.allow_tf32 = False
    return out


def gpu_tests(ctx: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx["left"](), env=_env()
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode not in (0, 5):  # 5: nothing selected
        raise RuntimeError(f"pytest -m gpu exited {proc.returncode}: {summary}")
    return {"summary": summary, "exit": proc.returncode}


def agreement(ctx: dict[str, Any]) -> dict[str, Any]:
    """One Stage-I D+G loss/gradient in bf16 and fp16 autocast against fp32 (same inputs)."""
    import torch

    from stackgan.config import RunConfig, from_dict
    from stackgan.losses import d_loss, g_loss, kl_loss
    from stackgan.networks import d_condition
    from stackgan.stages import build_stage

    device = torch.device(ctx["device"])
    model = {"arch": "paper", "gf_dim": 32, "df_dim": 16, "cond_dim": 32, "d_text_dim": 32}
    cfg = from_dict(RunConfig, {"stage": 1, "model": model})
    torch.manual_seed(0)
    stage = build_stage(cfg)
    G, D = stage.G.to(device), stage.D.to(device)
    gen = torch.Generator().manual_seed(1)
    real = (torch.rand(16, 3, 64, 64, generator=gen) * 2 - 1).to(device)
    emb = torch.randn(16, cfg.model.text_dim, generator=gen).to(device)
    z = torch.randn(16, cfg.model.z_dim, generator=gen).to(device)

    def run(dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        scale = 2.0**10 if dtype == torch.float16 else 1.0
        G.zero_grad()
        D.zero_grad()
        torch.manual_seed(3)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            fake, mu, logvar = G(emb, z)
            cond = d_condition(cfg.model, emb, mu)
            out_real, out_fake = D(real, cond, cond[1:]), D(fake, cond)
            ld, _ = d_loss(out_real.logits, out_real.wrong_logits, out_fake.logits)
            lg = g_loss(out_fake.logits) + 2.0 * kl_loss(mu.float(), logvar.float())
        ((ld + lg) * scale).backward()
        grads = [p.grad.float().flatten() / scale for p in [*G.parameters(), *D.parameters()]]
        return torch.stack([ld, lg]).detach().float().cpu(), torch.cat(grads).cpu()

    ref_loss, ref_grad = run(None)
    out: dict[str, Any] = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        loss, grad = run(dtype)
        rel = ((loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-6)).max().item()
        cos = torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0).item()
        out[name] = {"max_rel_loss_diff": round(rel, 5), "grad_cosine": round(cos, 5)}
        out[name]["ok"] = rel < 0.03 and cos > 0.9
    if not all(v["ok"] for v in out.values()):
        raise RuntimeError(f"precision disagreement: {out}")
    return out


def syncbn(ctx: dict[str, Any]) -> dict[str, Any]:
    """SyncBatchNorm in a one-process NCCL group must reproduce plain BatchNorm."""
    if not ctx["device"].startswith("cuda"):
        raise Skip("SyncBatchNorm needs CUDA")
    import torch
    import torch.distributed as dist

    from stackgan.config import ModelConfig
    from stackgan.networks import build_networks

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        G, _ = build_networks(ModelConfig(arch="paper"), 1)
        G = G.cuda()
        sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
            build_networks(ModelConfig(arch="paper"), 1)[0]
        ).cuda()
        sync.load_state_dict(G.state_dict())
        emb, z = torch.randn(8, 1024, device="cuda"), torch.randn(8, 100, device="cuda")
        torch.manual_seed(5)
        a = G(emb, z)[0]
        torch.manual_seed(5)
        b = sync(emb, z)[0]
        (a.mean() + b.mean()).backward()
        diff = (a - b).abs().max().item()
        stats = max(
            (x - y).abs().max().item()
            for (n, x), (_, y) in zip(
                G.state_dict().items(), sync.state_dict().items(), strict=True
            )
            if "running" in n
        )
    finally:
        dist.destroy_process_group()
    if diff > 1e-3 or stats > 1e-4:
        raise RuntimeError(f"SyncBatchNorm differs: images {diff}, running stats {stats}")
    return {"max_image_diff": diff, "max_running_stat_diff": stats}


def nccl_vs_gloo(ctx: dict[str, Any]) -> dict[str, Any]:
    """2-rank DDP steps on the same inputs under NCCL and gloo (CPU dry run: gloo twice)."""
    import torch

    gpus = torch.cuda.device_count() if ctx["device"].startswith("cuda") else 0
    if gpus < 2 and not ctx["dry_run"]:
        raise Skip(f"needs 2 GPUs, found {gpus}")
    backends = ("gloo", "gloo") if gpus < 2 else ("nccl", "gloo")
    weights = []
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as tmp:
        for i, backend in enumerate(backends):
            out = Path(tmp) / f"{i}-{backend}.pt"
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2", __file__, "--ddp-worker", backend, str(out),
            ]  # fmt: skip
            proc = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx["left"](), env=_env()
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{backend} worker failed: {proc.stderr[-1500:]}")
            weights.append(torch.load(out, weights_only=True))
    diff = max((a - b).abs().max().item() for a, b in zip(*weights, strict=True))
    if diff > 1e-4:
        raise RuntimeError(f"{backends[0]} and {backends[1]} differ by {diff}")
    return {"backends": list(backends), "max_weight_diff": diff}


def ddp_worker(backend: str, out: str) -> None:
    """torchrun worker of :func:`nccl_vs_gloo`: 3 DDP steps of Stage-I D on fixed data."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from stackgan.config import ModelConfig
    from stackgan.networks import build_networks

    rank = int(os.environ["RANK"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    torch.manual_seed(0)
    _, D = build_networks(ModelConfig(arch="paper", df_dim=16, d_text_dim=32), 1)
    D = D.to(device)
    ddp = DDP(D, device_ids=[device.index] if cuda else None, broadcast_buffers=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        img = torch.randn(8, 3, 64, 64, generator=gen).to(device)
        emb = torch.randn(8, 1024, generator=gen).to(device)
        opt.zero_grad()
        ddp(img, emb).logits.square().mean().backward()
        opt.step()
    if rank == 0:
        torch.save([p.detach().cpu() for p in D.parameters()], out)
    dist.destroy_process_group()


def throughput(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """bench_train.py's worker (the real training loop on synthetic batches), per mode."""
    from stackgan.config import ModelConfig
    from stackgan.summary import training_step_flops

    model = ModelConfig(arch="paper")
    if ctx["dry_run"]:  # toy sizes on CPU; bf16 is exercised on Stage-I only
        cases = [(1, 2, ("fp32", "bf16")), (2, 2, ("fp32",))]
        warmup, steps = 1, 1
    else:
        cases = [(1, 64, MODES), (2, 64, MODES)]
        warmup, steps = 3, 10
    rows = []
    for stage, batch, modes in cases:
        flops = training_step_flops(model, stage, 2, g_step_fakes="redraw")["total"] / 2
        for mode in modes:
            if ctx["left"]() < 30:
                rows.append({"stage": stage, "batch": batch, "mode": mode, "error": "budget"})
                continue
            r = run_case("paper", stage, batch, mode, 1, warmup, steps, timeout=ctx["left"]())
            row: dict[str, Any] = {"stage": stage, "batch": batch, "mode": mode}
            if "error" in r:
                rows.append(row | {"error": r["error"]})
                continue
            step_s = statistics.median(r["step_s"])
            imgs = batch / step_s
            # fp32 convolutions run in TF32 on CUDA by default (cuDNN): that peak is theirs.
            peaks = ctx.get("peak") or {}
            key = "bf16" if "bf16" in mode else ("tf32" if "tf32_gflops" in peaks else "fp32")
            peak_gf = peaks.get(f"{key}_gflops", 0)
            row |= {
                "step_s": round(step_s, 4),
                "img_per_s": round(imgs, 1),
                "peak_gpu_gib": round(r.get("peak_gpu_bytes", 0) / 2**30, 2),
                "mfu": round(flops * imgs / 1e9 / peak_gf, 4) if peak_gf else None,
            }
            rows.append(row)
            print(f"  stage {stage} batch {batch} {mode}: {row}", flush=True)
    errors = [r for r in rows if r.get("error") not in (None, "budget")]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(rows)} cases failed: {errors}")
    return rows


def loader(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Loader samples/s with N workers on a small twin's shards (64 and 256 px)."""
    from stackgan.data.loader import spec_from_set, train_loader
    from stackgan.data.twin import TwinSpec, write_twin

    cores = os.cpu_count() or 1
    workers = [1] if ctx["dry_run"] else sorted({2, max(2, cores // 4), max(2, cores // 2)})
    batch, batches = (8, 3) if ctx["dry_run"] else (64, 20)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-data-") as tmp:
        root, shards = Path(tmp) / "twin", Path(tmp) / "shards"
        spec = TwinSpec(num_classes=20, images_per_class=4 if ctx["dry_run"] else 16, seed=0)
        write_twin(spec, root, workers=min(cores, 8), progress=False)
        cmd = [
            sys.executable, "-m", "stackgan.cli.build_shards", "--root", str(root),
            "--out", str(shards), "--workers", str(min(cores, 8)), "--quiet",
            "--splits", "train",
        ]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=_env())
        for res in (64, 256):
            for n in workers:
                s = spec_from_set(
                    shards / f"train-{res}", batch_size=batch, num_workers=n, caption_mode="mean4"
                )
                it = train_loader(s, 0)
                next(it)
                t0 = time.perf_counter()
                for _ in range(batches):
                    next(it)
                rate = batches * batch / (time.perf_counter() - t0)
                rows.append({"resolution": res, "workers": n, "samples_per_s": round(rate, 1)})
                print(f"  loader {res} px, {n} workers: {rate:.0f} samples/s", flush=True)
                del it
    return rows


def estimate(ctx: dict[str, Any]) -> dict[str, Any]:
    """GPU-hours of the paper's retrain from the fastest measured mode per stage."""
    best: dict[int, dict[str, Any]] = {}
    for row in ctx.get("throughput") or []:
        if "img_per_s" in row and row["img_per_s"] > best.get(row["stage"], {}).get("img_per_s", 0):
            best[row["stage"]] = row
    if set(best) != {1, 2}:
        raise Skip("no throughput for both stages")
    images = CUB_TRAIN_IMAGES * PAPER_EPOCHS  # per stage: 600 epochs of the training split
    hours = {s: images / best[s]["img_per_s"] / 3600 for s in (1, 2)}
    loader_rates = {r["resolution"]: r["samples_per_s"] for r in ctx.get("loader") or []}
    return {
        "images_per_stage": images,
        "stage1": {"mode": best[1]["mode"], "img_per_s": best[1]["img_per_s"], "hours": hours[1]},
        "stage2": {"mode": best[2]["mode"], "img_per_s": best[2]["img_per_s"], "hours": hours[2]},
        "total_gpu_hours": round(hours[1] + hours[2], 2),
        "loader_max_samples_per_s": loader_rates,
        "goal_hours": 3.0,
        "goal_met": hours[1] + hours[2] < 3.0,
    }


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("environment", environment),
    ("peak", peak),
    ("gpu_tests", gpu_tests),
    ("agreement", agreement),
    ("syncbn", syncbn),
    ("nccl_vs_gloo", nccl_vs_gloo),
    ("throughput", throughput),
    ("loader", loader),
    ("estimate", estimate),
]


# --------------------------------------------------------------------------- driver


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def markdown(report: dict[str, Any]) -> str:
    """The report as the Markdown that goes into docs/benchmarks.md."""
    env = report["sections"].get("environment", {}).get("result", {})
    lines = [
        f"GPU acceptance ({'dry run on CPU' if report['dry_run'] else 'GPU'}): "
        f"{', '.join(env.get('gpus') or ['no GPU'])}, torch {env.get('torch')}, "
        f"CUDA {env.get('cuda')}; {report['seconds']:.0f} s.",
        "",
        "| section | status | result |",
        "| --- | --- | --- |",
    ]
    for name, sec in report["sections"].items():
        if name in ("throughput", "loader") and sec["status"] == "ok":
            result = f"{len(sec['result'])} rows below"
        else:
            result = json.dumps(sec.get("result", sec.get("reason", "")))[:160]
        lines.append(f"| {name} | {sec['status']} | {result} |")
    rows = report["sections"].get("throughput", {}).get("result") or []
    if rows:
        lines += [
            "",
            "| stage | batch | mode | step s | img/s | peak GPU GiB | MFU |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['stage']} | {r['batch']} | {r['mode']} | {r['error']} |||")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            lines.append(
                f"| {r['stage']} | {r['batch']} | {r['mode']} | {r['step_s']} | "
                f"{r['img_per_s']} | {r['peak_gpu_gib']} | {mfu} |"
            )
    est = report["sections"].get("estimate", {})
    if est.get("status") == "ok":
        e = est["result"]
        lines += [
            "",
            f"Full CUB retrain ({e['images_per_stage']:,} images per stage = 8,855 x 600 "
            f"epochs): Stage-I {e['stage1']['hours']:.2f} h ({e['stage1']['mode']}, "
            f"{e['stage1']['img_per_s']} img/s) + Stage-II {e['stage2']['hours']:.2f} h "
            f"({e['stage2']['mode']}, {e['stage2']['img_per_s']} img/s) = "
            f"**{e['total_gpu_hours']} GPU-hours** (goal < 3: "
            f"{'met' if e['goal_met'] else 'missed'}); loader maximum "
            f"{e['loader_max_samples_per_s']} samples/s.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("bench-out/gpu-acceptance"))
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check the plumbing")
    p.add_argument("--budget-s", type=float, default=480.0, help="time box of the whole run")
    p.add_argument(
        "--only", nargs="+", choices=[n for n, _ in SECTIONS], help="run these sections only"
    )
    p.add_argument("--ddp-worker", nargs=2, metavar=("BACKEND", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ddp_worker:
        ddp_worker(*args.ddp_worker)
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device here; use --dry-run to check the plumbing on CPU")
    t0 = time.perf_counter()
    ctx: dict[str, Any] = {
        "dry_run": args.dry_run,
        "device": "cpu" if args.dry_run else "cuda:0",
        "left": lambda: max(1.0, args.budget_s - (time.perf_counter() - t0)),
    }
    report: dict[str, Any] = {"dry_run": args.dry_run, "sections": {}}
    for name, fn in SECTIONS:
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            if ctx["left"]() <= 1.0:
                raise Skip("time budget spent")
            result = fn(ctx)
            ctx[name] = result
            sec = {"status": "ok", "result": result}
        except Skip as why:
            sec = {"status": "skipped", "reason": str(why)}
        except Exception as err:  # a failed section is reported; the others still run
            sec = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:2000]}
        sec["seconds"] = round(time.perf_counter() - start, 1)
        report["sections"][name] = sec
        print(f"   {sec['status']} ({sec['seconds']} s): {sec.get('reason', '')}", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_acceptance.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_acceptance.md").write_text(markdown(report))
    print(markdown(report))
    failed = [n for n, s in report["sections"].items() if s["status"] == "failed"]
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
