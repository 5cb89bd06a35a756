"""Turn a training rule's resources into the right launcher, run it, and requeue a stopped
SLURM job.

    python -m pipeline.launch --nodes N --ranks-per-node R --gpus-per-node G --cpus-per-task C \\
        -- -m stackgan.cli.train --config ... --data ...

* ``nodes > 1`` (a SLURM ``mpi`` rule): ``srun`` starts one ``torchrun`` per node; they meet
  through c10d rendezvous on the head node (this host) at ``29500 + job id % 1000``.
  The plugin strips ``SLURM_*`` from the rule's environment except the job id, so the
  inner ``srun`` is given its node, task, CPU and GPU counts explicitly.
* one node, several ranks: ``torchrun --standalone``.
* one rank: plain ``python``.

torchrun forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGUSR1 to the workers, which
checkpoint at the next step boundary and exit 75 (see stackgan.training.control).

The launcher itself ignores SIGTERM and SIGUSR1 (SLURM signals every process of the job at
preemption, at ``--signal`` time and on ``scancel --signal=... --full``; the launcher must
outlive the ranks, which get the signal themselves) and waits for the command. When the
command exits 75 ("stopped after saving") inside a SLURM job that is still RUNNING, it
requeues that job (``scontrol requeue``): the same job id runs again and resumes from the
saved state, and Snakemake keeps waiting for it. ``--no-requeue`` turns that off.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
EXIT_STOPPED = 75  # the trainer saved its state on a stop signal (EX_TEMPFAIL)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def rendezvous_port(job_id: str | int) -> int:
    """A port derived from the SLURM job id (stable across the nodes of one job)."""
    return 29500 + int(job_id) % 1000


def build_command(
    *,
    nodes: int,
    ranks_per_node: int,
    gpus_per_node: int,
    cpus_per_task: int,
    train_args: list[str],
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The argv to exec for this rule (pure function; see the module docstring)."""
    env = dict(os.environ if env is None else env)
    torchrun = [python, "-m", "torch.distributed.run"]
    if nodes > 1:
        job_id = env.get("SLURM_JOB_ID")
        if not job_id or shutil.which("srun", path=env.get("PATH")) is None:
            raise SystemExit(
                f"launch: {nodes} nodes requested, but this is not a SLURM job with srun available"
            )
        head = socket.gethostname()
        srun = [
            "srun",
            f"--nodes={nodes}",
            f"--ntasks={nodes}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={cpus_per_task}",
            *([f"--gres=gpu:{gpus_per_node}"] if gpus_per_node > 0 else []),
            "--kill-on-bad-exit=1",
        ]
        return [
            *srun,
            *torchrun,
            f"--nnodes={nodes}",
            f"--nproc-per-node={ranks_per_node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={head}:{rendezvous_port(job_id)}",
            f"--rdzv-id={job_id}",
            f"--signals-to-handle={SIGNALS}",
            "--shutdown-timeout=120",
            *train_args,
        ]
    if ranks_per_node > 1:
        return [
            *torchrun,
            "--standalone",
            f"--nproc-per-node={ranks_per_node}",
            f"--signals-to-handle={SIGNALS}",
            "--shutdown-timeout=120",
            *train_args,
        ]
    return [python, *train_args]


def main(argv: list[str] | None = None) -> int:
    """Parse, print and run the launch command; requeue the SLURM job on exit 75."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        argv = [*argv, "--"] if any(a in ("-h", "--help") for a in argv) else argv
    if "--" not in argv:
        print("launch: separate launcher options and the training command with --", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(
        prog="python -m pipeline.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--ranks-per-node", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.add_argument(
        "--no-requeue",
        action="store_true",
        help="do not requeue the SLURM job when the training stops after saving (exit 75)",
    )
    args = p.parse_args(argv[:split])
    train_args = argv[split + 1 :]
    if not train_args:
        print("launch: no training command after --", file=sys.stderr)
        return 2
    cmd = build_command(
        nodes=args.nodes,
        ranks_per_node=args.ranks_per_node,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        train_args=train_args,
    )
    print("launch:", " ".join(cmd), flush=True)
    if args.dry_run:
        return 0
    rc = run_command(cmd)
    if rc == EXIT_STOPPED and not args.no_requeue:
        requeue_slurm_job(os.environ.get("SLURM_JOB_ID"))
    return rc


def run_command(cmd: list[str]) -> int:
    """Run ``cmd`` to its end, ignoring the stop signals here once it is started (it keeps
    the dispositions the launcher was started with); its exit status (128 + N when signal N
    killed it)."""
    try:
        child = subprocess.Popen(cmd)
    except OSError as err:
        print(f"launch: cannot run {cmd[0]}: {err}", file=sys.stderr)
        return 127
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    rc = child.wait()
    return 128 - rc if rc < 0 else rc


def requeue_slurm_job(job_id: str | None) -> bool:
    """``scontrol requeue`` this SLURM job if it is still RUNNING (not when it is being
    cancelled, or outside SLURM); whether it was requeued."""
    if not job_id or shutil.which("scontrol") is None:
        print("launch: stopped after saving (exit 75); not a SLURM job: run again to resume")
        return False
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
    )
    state = re.search(r"\bJobState=(\S+)", shown.stdout)
    if shown.returncode != 0 or not state or state.group(1) != "RUNNING":
        found = state.group(1) if state else "unknown"
        print(f"launch: stopped after saving; job {job_id} is {found}: not requeued", flush=True)
        return False
    done = subprocess.run(
        ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        print(f"launch: scontrol requeue {job_id} failed: {done.stderr.strip()}", flush=True)
        return False
    print(f"launch: stopped after saving; requeued SLURM job {job_id} to resume", flush=True)
    return True


if __name__ == "__main__":
    raise SystemExit(main())
