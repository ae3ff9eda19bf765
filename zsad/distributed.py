"""More than one process: the process group that ``torchrun`` or ``accelerate launch`` sets up, as one small object.

Both launchers export ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`from_env` joins that group (NCCL when this rank computes on CUDA, gloo on CPU) with a timeout on every
collective, so a rank that died makes the others stop with a message instead of waiting forever. In a single
process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) :class:`Dist` is a no-op and nothing is imported or initialised.

What is sharded how (the runner and the commands decide; this module only moves data):

- :func:`balanced_slices`: contiguous, balanced-by-count slices of a list, rank k gets the k-th;
- :func:`assign_groups`: whole groups to ranks, largest first to the least loaded rank (deterministic);
- :meth:`Dist.broadcast_tensor` / :meth:`Dist.all_gather_tensors`: feature blocks and small per-image numbers.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from zsad.errors import UsageError, ZsadError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a collective may wait for the other ranks before this rank gives up (``ZSAD_DIST_TIMEOUT`` overrides).
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(ZsadError):
    """The ranks disagree (arguments, output folder) or one of them stopped answering."""


@dataclass
class Dist:
    """This process's place among the ranks; every method is a no-op in a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _device(self) -> torch.device:
        """Where tensors must be for the backend's collectives."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # gloo/NCCL report a dead peer or a timeout as RuntimeError
            first = str(exc).splitlines()[0][:300]
            raise DistributedError(
                f"rank {self.rank}: {what} across {self.world_size} processes failed ({first}); another rank "
                f"probably stopped — see its output, then rerun with --resume") from None

    def barrier(self, what: str = "waiting for the other ranks") -> None:
        if self.active:
            import torch.distributed as dist

            self._call(what, dist.barrier)

    def all_gather_object(self, obj: T, what: str = "exchanging results") -> list[T]:
        """Every rank's ``obj`` (small, picklable), in rank order."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._call(what, dist.all_gather_object, out, obj)
        return out

    def broadcast_object(self, obj: T, src: int = 0, what: str = "sharing a value") -> T:
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        self._call(what, dist.broadcast_object_list, box, src=src)
        return box[0]

    def broadcast_tensor(self, tensor: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype, src: int,
                         what: str = "sending feature blocks") -> torch.Tensor:
        """``tensor`` of rank ``src`` on every rank (others pass None); returned on the CPU."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        device = self._device()
        buffer = (tensor.to(device, dtype).contiguous() if self.rank == src
                  else torch.empty(tuple(shape), dtype=dtype, device=device))
        self._call(what, dist.broadcast, buffer, src=src)
        return buffer.cpu()

    def all_gather_tensors(self, tensor: torch.Tensor, what: str = "gathering scores") -> list[torch.Tensor]:
        """Every rank's tensor (same trailing shape, any first dimension), in rank order, on the CPU."""
        if not self.active:
            return [tensor]
        sizes = self.all_gather_object(tuple(tensor.shape), what)
        return [self.broadcast_tensor(tensor if r == self.rank else None, shape, tensor.dtype, r, what)
                for r, shape in enumerate(sizes)]

    def check_same(self, settings: dict[str, Any], what: str = "arguments") -> None:
        """Refuse to run when the ranks were started with different ``settings``."""
        if not self.active:
            return
        every = self.all_gather_object(settings, "comparing arguments")
        differ = sorted({k for other in every for k in set(other) | set(settings) if other.get(k) != settings.get(k)})
        if differ:
            raise DistributedError(f"the {self.world_size} processes were started with different {what}: "
                                   f"{', '.join(differ)}; start every rank with the same command line")

    def check_shared_folder(self, folder: Path) -> None:
        """Every rank must see the same ``folder`` (results are merged there): each writes a marker with a token
        from rank 0, rank 0 checks that it sees all of them."""
        if not self.active:
            return
        token = self.broadcast_object(secrets.token_hex(8) if self.is_main else None)
        markers = Path(folder) / ".shards" / "markers"
        markers.mkdir(parents=True, exist_ok=True)
        (markers / f"rank-{self.rank}").write_text(token, encoding="utf-8")
        self.barrier("checking the output folder")
        missing = []
        if self.is_main:
            for r in range(self.world_size):
                marker = markers / f"rank-{r}"
                if not marker.is_file() or marker.read_text(encoding="utf-8") != token:
                    missing.append(r)
        missing = self.broadcast_object(missing)
        self.barrier("checking the output folder")
        (markers / f"rank-{self.rank}").unlink(missing_ok=True)
        if missing:
            raise DistributedError(f"the output folder {folder} is not shared by all ranks (rank 0 cannot see the "
                                   f"files of rank(s) {missing}); use a folder on a file system every node mounts")

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def launched() -> bool:
    """Whether a launcher started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def timeout_from_env() -> float:
    text = os.environ.get("ZSAD_DIST_TIMEOUT", "")
    try:
        return float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UsageError(f"ZSAD_DIST_TIMEOUT must be a number of seconds, got {text!r}") from None


def from_env(device: str = "auto", timeout_s: float | None = None) -> Dist:
    """Join the launcher's process group (or stay single): NCCL when ``device`` resolves to CUDA, gloo otherwise.
    On CUDA each rank uses its local GPU (``cuda:LOCAL_RANK``)."""
    if not launched():
        return Dist()
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available() \
        and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else timeout_from_env())
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    log.info("rank %d of %d (local rank %d, %s)", rank, world, local_rank, backend)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def rank_device(device: str, d: Dist) -> str:
    """The device this rank computes on: its local GPU when ``device`` asks for CUDA (or auto finds it)."""
    if d.backend == "nccl" and device in ("auto", "cuda"):
        return f"cuda:{torch.cuda.current_device()}"
    if d.active and device == "auto":
        return "cpu"
    return device


def balanced_slices(n: int, world_size: int) -> list[slice]:
    """``world_size`` contiguous slices of ``range(n)`` whose sizes differ by at most one."""
    bounds = [n * r // world_size for r in range(world_size + 1)]
    return [slice(bounds[r], bounds[r + 1]) for r in range(world_size)]


def assign_groups(sizes: Sequence[int], world_size: int) -> list[int]:
    """The rank of each group: largest first to the least loaded rank (ties: lower group index, lower rank)."""
    loads = [0] * world_size
    owner = [0] * len(sizes)
    for g in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda k: (loads[k], k))
        owner[g] = r
        loads[r] += sizes[g]
    return owner
