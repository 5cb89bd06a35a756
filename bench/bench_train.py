"""Training throughput of the real loop (stackgan.training.loop) on synthetic batches.

Every configuration runs in a fresh subprocess (clean peak-RSS reading): build the full-
size networks, run warm-up steps, then time each step. Reports img/s (median over the
timed steps), achieved GFLOP/s from the nominal FLOP count (stackgan.summary), MFU
against this machine's measured peak matmul GFLOP/s (fp32 and bf16, measured once per
invocation) and peak RSS.

    python bench/bench_train.py --help
    python bench/bench_train.py --arch pytorch --modes fp32 --cases 1:64 2:8 2:64
    python bench/bench_train.py --modes fp32 bf16 cl cl+bf16 compile --cases 1:64 2:8
    python bench/bench_train.py --ranks 2 --cases 1:64          # DDP overhead on this machine

Modes: fp32 | bf16 (autocast) | cl (channels_last) | cl+bf16 | compile | compile+bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    import psutil

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}"
    )


def peak_gflops(dtype_name: str, size: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """Best-of-3 square matmul throughput (the practical peak for MFU)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    a @ b
    sync()
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e9)
    return best


# --------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> None:
    """One configuration, in this process (rank from the environment under torchrun)."""
    import resource

    import torch

    from stackgan import distributed as dist_utils
    from stackgan.config import RunConfig, from_dict, to_dict
    from stackgan.networkfile import NetworkFile, write_network
    from stackgan.runtime import tune_allocator
    from stackgan.stages import build_stage
    from stackgan.training.loop import training_loop

    tune_allocator()
    info = dist_utils.init()
    parts = args.mode.split("+")
    train = {
        "batch_size": args.batch,
        "epochs": 1,
        "max_steps": args.warmup + args.steps,
        "amp": next((a for a in ("bf16", "fp16") if a in parts), "fp32"),
        "channels_last": "cl" in parts,
        "compile": "compile" in parts,
        "log_every": 1,
        "sample_every": 0,
        "checkpoint_every_minutes": 0,
        "keep_checkpoints": 1,
        "num_workers": 0,
    }
    model = {"arch": args.arch}
    tmp = Path(args.tmpdir)  # shared by every rank of this case; the driver removes it
    stage1_file = None
    if args.stage == 2:
        cfg1 = from_dict(RunConfig, {"stage": 1, "model": model})
        torch.manual_seed(0)
        g1 = build_stage(cfg1).G
        stage1_file = tmp / "stage1.pt"
        if info.is_main:
            write_network(
                stage1_file,
                NetworkFile(stage=1, step=0, model=to_dict(cfg1.model), G=g1.state_dict()),
            )
        dist_utils.barrier()
    cfg = from_dict(RunConfig, {"stage": args.stage, "model": model, "train": train})
    torch.manual_seed(0)
    stage = build_stage(cfg, stage1_file)
    size = 64 if args.stage == 1 else 256
    gen = torch.Generator().manual_seed(info.rank)
    images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, generator=gen)
    embs = torch.randn(args.batch, 1024, generator=gen)
    classes = torch.arange(args.batch) % 7

    def make_data(start: int):
        step = start
        while True:
            yield {"image": images, "emb": embs, "class_id": classes, "step": torch.tensor(step)}
            step += 1

    stamps: list[float] = []
    losses: list[tuple[float, float]] = []

    def on_step(step: int, metrics: dict[str, float]) -> None:
        stamps.append(time.perf_counter())
        losses.append((float(metrics["loss_d"]), float(metrics["loss_g"])))

    training_loop(
        cfg=cfg,
        stage=stage,
        make_data=make_data,
        steps_per_epoch=10**6,
        workdir=tmp / "work",
        out_network=tmp / "net.pt",
        info=info,
        step_callback=on_step,
    )
    times = (
        [b - a for a, b in zip(stamps[args.warmup - 1 : -1], stamps[args.warmup :], strict=True)]
        if args.warmup
        else []
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cuda = info.device.type == "cuda"
    if info.is_main:
        print(
            json.dumps(
                {
                    "step_s": times,
                    "peak_rss": rss,
                    "peak_gpu_bytes": torch.cuda.max_memory_allocated(info.device) if cuda else 0,
                    "device": str(info.device),
                    "world": info.world_size,
                    "losses": losses,
                }
            )
        )
    dist_utils.shutdown()


# --------------------------------------------------------------------------- driver


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-6)


def run_case(
    arch: str,
    stage: int,
    batch: int,
    mode: str,
    ranks: int,
    warmup: int,
    steps: int,
    timeout: float | None = None,
) -> dict:
    args = [
        "--worker",
        "--arch",
        arch,
        "--stage",
        str(stage),
        "--batch",
        str(batch),
        "--mode",
        mode,
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
    ]
    script = str(Path(__file__).resolve())
    if ranks > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={ranks}",
            script,
            *args,
        ]
    else:
        cmd = [sys.executable, script, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    try:
        cmd += ["--tmpdir", tmp]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # networks and checkpoints: up to GBs per case
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="pytorch", choices=("pytorch", "paper"))
    p.add_argument(
        "--cases", nargs="+", default=["1:64", "2:8", "2:64"], help="stage:per-rank batch"
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=["fp32"],
        choices=("fp32", "bf16", "fp16", "cl", "cl+bf16", "compile", "compile+bf16"),
    )
    p.add_argument(
        "--ranks", type=int, default=1, help="processes (gloo DDP when > 1, same per-rank batch)"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--tmpdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0

    sys.path.insert(0, str(ROOT))
    from stackgan.config import ModelConfig
    from stackgan.summary import training_step_flops

    print(f"# machine: {machine()}")
    peaks = {d: peak_gflops(d) for d in ("fp32", "bf16")}
    print(
        f"# measured peak matmul: fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    print(
        f"# arch {args.arch}, ranks {args.ranks}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per case"
    )
    print(
        "stage  batch  mode           step s (median)   img/s   GFLOP/s   MFU     peak RSS GiB"
        "   mean loss_d/loss_g (rel. diff to fp32: step 1, mean)"
    )
    model = ModelConfig(arch=args.arch)
    g_fakes = "reuse" if args.arch == "pytorch" else "redraw"
    for case in args.cases:
        stage, batch = (int(v) for v in case.split(":"))
        flops = (
            training_step_flops(model, stage, 2, g_step_fakes=g_fakes)["total"] / 2
        )  # per image, nominal
        reference: list[list[float]] | None = None
        for mode in args.modes:
            r = run_case(args.arch, stage, batch, mode, args.ranks, args.warmup, args.steps)
            if "error" in r:
                print(f"{stage:>5}  {batch:>5}  {mode:<13}  failed: {r['error']}")
                continue
            med = statistics.median(r["step_s"])
            imgs = batch * r["world"] / med
            gflops = flops * imgs / 1e9
            peak = peaks["bf16" if "bf16" in mode else "fp32"]
            losses = r["losses"]
            agree = ""
            if mode == "fp32":
                reference = losses
            elif reference is not None:
                # Step 1 starts from identical weights and data: pure numeric agreement.
                # Later steps follow diverging GAN trajectories; their mean is shown too.
                first = max(_rel(a, b) for a, b in zip(losses[0], reference[0], strict=True))
                means = max(
                    _rel(
                        statistics.fmean(v[i] for v in losses),
                        statistics.fmean(v[i] for v in reference),
                    )
                    for i in (0, 1)
                )
                agree = f" (step 1: {100 * first:.1f}%, mean: {100 * means:.1f}%)"
            mean_d = statistics.fmean(v[0] for v in losses)
            mean_g = statistics.fmean(v[1] for v in losses)
            print(
                f"{stage:>5}  {batch:>5}  {mode:<13}  {med:8.2f} "
                f"({min(r['step_s']):.2f}-{max(r['step_s']):.2f})"
                f"  {imgs:6.1f}  {gflops:8.0f}  {100 * gflops / peak:5.1f}%"
                f"  {r['peak_rss'] / 2**30:8.2f}"
                f"   {mean_d:.4f}/{mean_g:.4f}{agree}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
