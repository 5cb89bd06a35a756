"""Turn a training rule's resources into the right launcher, run it, stop it before the
SLURM time limit, and requeue a stopped SLURM job.

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

Inside a SLURM job, ``--stop-before-limit S`` (default 180) sends SIGUSR1 to the command S
seconds before the job's time limit (read with ``squeue -o %L``, and read again before the
signal in case the limit was changed); ``srun`` forwards it to every task. One-node training
runs in the job's batch step, where ``sbatch --signal`` (which signals job steps) cannot reach
it, so the launcher keeps the time itself.

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
import threading
import time

SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
EXIT_STOPPED = 75  # the trainer saved its state on a stop signal (EX_TEMPFAIL)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_BEFORE_LIMIT_S = 180
MIN_WORK_S = 10  # do not arm the stop timer if less work than this would fit before it


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
    p.add_argument(
        "--stop-before-limit",
        type=int,
        default=STOP_BEFORE_LIMIT_S,
        metavar="S",
        help="in a SLURM job: SIGUSR1 to the training S seconds before the time limit "
        f"(0 = never; default {STOP_BEFORE_LIMIT_S})",
    )
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
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id:
        for key, value in slurm_job_env(job_id).items():
            os.environ.setdefault(key, value)
    rc = run_command(cmd, stop_before_limit=args.stop_before_limit if job_id else 0, job_id=job_id)
    if rc == EXIT_STOPPED and not args.no_requeue:
        requeue_slurm_job(os.environ.get("SLURM_JOB_ID"))
    return rc


def run_command(cmd: list[str], stop_before_limit: int = 0, job_id: str | None = None) -> int:
    """Run ``cmd`` to its end, ignoring the stop signals here once it is started (it keeps
    the dispositions the launcher was started with); with ``stop_before_limit`` > 0 and a
    SLURM ``job_id``, SIGUSR1 to it that many seconds before the job's time limit. Its exit
    status (128 + N when signal N killed it)."""
    try:
        child = subprocess.Popen(cmd)
    except OSError as err:
        print(f"launch: cannot run {cmd[0]}: {err}", file=sys.stderr)
        return 127
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    done = threading.Event()
    if stop_before_limit > 0 and job_id:
        threading.Thread(
            target=stop_before_time_limit,
            args=(child, job_id, stop_before_limit, done),
            daemon=True,
        ).start()
    rc = child.wait()
    done.set()
    return 128 - rc if rc < 0 else rc


def parse_time_left(text: str) -> int | None:
    """Seconds in squeue's ``%L`` (``[D-]HH:MM:SS``, ``MM:SS`` or ``SS``); None for
    ``UNLIMITED``, ``NOT_SET``, ``INVALID`` or anything else."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(?:(\d+):)?(\d+)", text.strip())
    if not m:
        return None
    days, a, b, secs = (int(g) if g else 0 for g in m.groups())
    hours, minutes = (a, b) if m.group(3) is not None else (0, a)
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def slurm_time_left(job_id: str) -> int | None:
    """Seconds until ``job_id``'s time limit (None: no limit, or squeue cannot tell)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%L"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_time_left(out.stdout) if out.returncode == 0 else None


def stop_before_time_limit(
    child: subprocess.Popen, job_id: str, margin: int, done: threading.Event
) -> None:
    """SIGUSR1 to ``child`` ``margin`` seconds before the time limit (re-read before firing,
    so that a changed limit moves the signal). Not armed when less than MIN_WORK_S of work
    would fit: a stop right at the start would only requeue the job again and again."""
    left = slurm_time_left(job_id)
    if left is None:
        return
    if left - margin < MIN_WORK_S:
        print(
            f"launch: job {job_id} has {left} s left, less than --stop-before-limit {margin} s "
            f"+ {MIN_WORK_S} s: no stop before the time limit (SIGTERM at the limit still saves)",
            flush=True,
        )
        return
    print(
        f"launch: job {job_id} has {left} s left: the training is asked to stop "
        f"{margin} s before the time limit",
        flush=True,
    )
    while True:
        deadline = time.monotonic() + left - margin
        if done.wait(max(0.0, deadline - time.monotonic())):
            return
        left = slurm_time_left(job_id)
        if left is None or left - margin <= 1:
            break
    print(f"launch: {left} s to the time limit: SIGUSR1 to the training", flush=True)
    child.send_signal(signal.SIGUSR1)


SCONTROL_ENV = {"Partition": "SLURM_JOB_PARTITION", "NodeList": "SLURM_JOB_NODELIST",
                "Restarts": "SLURM_RESTART_COUNT"}  # fmt: skip


def slurm_job_env(job_id: str) -> dict[str, str]:
    """The job's partition, node list and restart count as SLURM would set them, read with
    ``scontrol``: the SLURM executor plugin removes ``SLURM_*`` except the job id from the
    environment of a rule that runs in the batch step, and training records them."""
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = dict(re.findall(r"\b(\w+)=(\S+)", shown.stdout)) if shown.returncode == 0 else {}
    return {
        env: fields[key]
        for key, env in SCONTROL_ENV.items()
        if fields.get(key) not in (None, "", "(null)")
    }


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
