"""Process-group set-up from the launcher's environment (torchrun, ``srun``, or none).

One code path for 1 and N processes: :func:`init` reads ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` (torchrun) or ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` (plain
``srun`` without torchrun) and only creates a process group when the world has more
than one process. NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_ranks(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun or SLURM variables (torchrun wins)."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def _slurm_master_env() -> None:
    """For srun-native launches: derive MASTER_ADDR/PORT (SLURM sets none)."""
    if "MASTER_ADDR" not in os.environ:
        nodelist = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
        first = nodelist.split(",")[0]
        if "[" in first:  # host[01-04] -> host01
            base, rest = first.split("[", 1)
            first = base + rest.split("-")[0].split(",")[0].rstrip("]")
        os.environ["MASTER_ADDR"] = first
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000)


def init(*, prefer_cuda: bool = True, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group if the environment describes several processes."""
    rank, world, local = env_ranks()
    use_cuda = prefer_cuda and torch.cuda.is_available()
    device = (
        torch.device("cuda", local % max(1, torch.cuda.device_count()))
        if use_cuda
        else torch.device("cpu")
    )
    if use_cuda:
        torch.cuda.set_device(device)
    if world == 1:
        return DistInfo(0, 1, 0, device, None)
    if "RANK" not in os.environ:  # srun-native: give torch.distributed the variables it expects
        _slurm_master_env()
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if use_cuda else None,
        )
    info = DistInfo(rank, world, local, device, backend)
    log_placement(info)
    return info


def placement() -> dict[str, object]:
    """Where this process runs: its host name, and the rendezvous (master) address as this
    process resolves it."""
    master = os.environ.get("MASTER_ADDR", "")
    try:
        master_ip = socket.gethostbyname(master) if master else ""
    except OSError:
        master_ip = "unresolved"
    return {
        "host": socket.gethostname(),
        "master": f"{master}:{os.environ.get('MASTER_PORT', '')}",
        "master_ip": master_ip,
    }


def describe_placement(places: list[dict[str, object]], backend: str) -> str:
    """One line: the backend, the hosts, the rendezvous address and every rank's host."""
    hosts = sorted({str(p["host"]) for p in places})
    masters = sorted({f"{p['master']} ({p['master_ip']})" for p in places})
    ranks = ", ".join(f"rank {r} on {p['host']}" for r, p in enumerate(places))
    return (
        f"process group: {backend}, {len(places)} ranks on {len(hosts)} host(s); "
        f"rendezvous {' / '.join(masters)}; {ranks}"
    )


def log_placement(info: DistInfo) -> None:
    """Log (on rank 0) which host every rank runs on and the rendezvous address it used."""
    places = all_gather_object(placement())
    if info.is_main:
        log.info("%s", describe_placement(places, str(info.backend)))  # type: ignore[arg-type]


def shutdown() -> None:
    """Destroy the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Barrier across ranks; a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise max of small float lists across ranks (used to agree on stop/checkpoint)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of scalar metrics across ranks (keys must agree on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def all_gather_object(obj: object) -> list[object]:
    """Gather a picklable object from every rank (a one-element list without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running stats) across ranks, in place.

    Integer buffers (``num_batches_tracked``) are equal on every rank already and are
    broadcast from rank 0 to be safe. After this call every buffer is bit-identical
    across ranks.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world)
        else:
            dist.broadcast(buf, src=0)
