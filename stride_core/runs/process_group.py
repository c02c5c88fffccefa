"""The process group STRIDE's multi-process engine runs on: `Comm` (rank, world and the collectives the
engine uses, a no-op for one process), `setup` / `teardown` from torchrun's environment, `DataParallel`
(operator-training steps whose gradients are summed across ranks) and `token_blocks` (documents split by tokens).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import StrideError

logger = logging.getLogger(__name__)



@dataclass
class DistArgs:
    """Process-group settings and the per-rank memory bound of recovery."""

    backend: str = "auto"  # auto: nccl when the device is CUDA, else gloo
    query_batch: int = 64  # queries recovered at once per rank: the dense (batch, N) solution is the peak
    timeout_s: float = 1800.0  # a rank waiting longer than this for the others fails

    def __post_init__(self):
        if self.backend not in ("auto", "gloo", "nccl"):
            raise StrideError(f"backend must be auto, gloo or nccl, got {self.backend!r}")
        from ..method.arguments import check_float, check_int

        check_int(self.query_batch, "query_batch", 1)
        check_float(self.timeout_s, "timeout_s", 0.0, lo_open=True)


class Comm:
    """This process's rank and world size and the few collectives used here. With world size 1 no
    process group exists and every collective is the identity."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, initialized: bool = False):
        self.rank, self.world, self.local_rank, self.initialized = rank, world, local_rank, initialized

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.initialized:
            import torch.distributed as dist

            dist.barrier()

    def all_gather_object(self, obj) -> list:
        if not self.initialized:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        if not self.initialized:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_reduce_sum_(self, tensor):
        if self.initialized:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor, src: int = 0):
        if self.initialized:
            import torch.distributed as dist

            dist.broadcast(tensor, src=src)
        return tensor

    def block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n items (sizes differ by at most one)."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def agree(self, fn, *args, **kwargs):
        """Run fn on this rank, then make every rank fail if any did: the rank that raised re-raises
        its own error, the others raise a StrideError naming it (so no rank waits forever in a later
        collective). Every rank must call agree at the same points."""
        err, out = None, None
        try:
            out = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised below on this rank, reported on the others
            err = exc
        errs = self.all_gather_object(None if err is None else (type(err).__name__, str(err)))
        if err is not None:
            err.stride_agreed = True  # every rank knows: they can meet once more before exiting
            raise err
        for r, e in enumerate(errs):
            if e is not None:
                other = StrideError(f"process {r} failed ({e[0]}): {e[1]}")
                other.stride_agreed = True
                raise other
        return out


def setup(args: DistArgs | None = None, device: str = "auto") -> tuple[Comm, str]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
    environment) and pick this rank's device. Returns (comm, device); one process without torchrun."""
    import torch

    from ..store.models import resolve_device

    args = args or DistArgs()
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.startswith("cuda"):
        if dev == "cuda":
            n = torch.cuda.device_count()
            if world > 1 and local_rank >= n:
                raise StrideError(f"local rank {local_rank} has no GPU ({n} visible): lower --nproc_per_node to {n}")
            dev = f"cuda:{local_rank % max(n, 1)}"
        torch.cuda.set_device(torch.device(dev))
    if world == 1:
        return Comm(), dev
    import torch.distributed as dist

    backend = args.backend if args.backend != "auto" else ("nccl" if dev.startswith("cuda") else "gloo")
    if backend == "nccl" and not dev.startswith("cuda"):
        raise StrideError("the nccl backend needs CUDA devices: use --backend gloo or --device cuda")
    if not dist.is_initialized():
        # gloo carries the object collectives and the CPU tensors; nccl (if chosen) is the default for
        # the gradient all_reduce on GPUs. Object collectives on nccl need the current device, set above.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=args.timeout_s))
    return Comm(dist.get_rank(), dist.get_world_size(), local_rank, initialized=True), dev


def teardown(comm: Comm):
    if comm.initialized:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class DataParallel:
    """The `part` hook of operators.train_operators: this rank's share of a step's global sample, the
    initial parameter broadcast, and one all_reduce of gradients + loss terms per step."""

    def __init__(self, comm: Comm):
        self.comm = comm

    def share(self, n: int) -> tuple[int, int]:
        return self.comm.block(n)

    def broadcast(self, module):
        import torch

        with torch.no_grad():
            for p in module.parameters():
                self.comm.broadcast_(p.data, src=0)

    def reduce(self, module, terms: dict) -> dict:
        """Sum the gradients (a missing one counts as zeros) and the scalar terms over ranks in one
        flat all_reduce; gradients are written back in place. Returns the summed terms."""
        import torch

        params = [p for p in module.parameters() if p.requires_grad]
        dev = params[0].device
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        names = list(terms)
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.stack([terms[n].float().to(dev) for n in names])])
        self.comm.all_reduce_sum_(flat)
        i = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[i:i + n].view_as(p).to(p.dtype).clone()
            i += n
        return {name: flat[i + j] for j, name in enumerate(names)}


def token_blocks(offsets: np.ndarray, world: int) -> list[tuple[int, int]]:
    """Contiguous document blocks [a, b) with about the same number of tokens each (one per rank)."""
    offsets = np.asarray(offsets)
    N, T = len(offsets) - 1, int(offsets[-1])
    cuts = [0]
    for r in range(1, world):
        goal = r * T / world
        i = int(np.searchsorted(offsets, goal, side="left"))  # first boundary at or past the goal
        if 0 < i <= N and goal - offsets[i - 1] < offsets[i] - goal:
            i -= 1  # the boundary before it is nearer
        cuts.append(min(i, N))
    cuts = np.maximum.accumulate(cuts + [N])
    return [(int(cuts[r]), int(cuts[r + 1])) for r in range(world)]
