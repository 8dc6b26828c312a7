"""Process-group setup for torchrun (DDP) that also works as a single plain process.

Under ``torchrun`` the environment holds RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR /
MASTER_PORT); :func:`init` then joins the process group with NCCL on CUDA or gloo on CPU.
Without those variables everything degrades to rank 0 of a world of size 1.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def _env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str | torch.device = "cpu") -> torch.device:
    """Join the torchrun process group if there is one; return this process' device.

    ``device`` is the run's device type (``'cpu'``, ``'cuda'`` or ``'cuda:N'``); under torchrun
    on CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    device = torch.device(device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        if device.index is None:  # plain 'cuda': the current device (set_device needs an index)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    if "RANK" in os.environ and _env_world() > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://",
                                device_id=device if device.type == "cuda" else None)
    return device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank (identity without DDP)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank (``[obj]`` without DDP)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not is_initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()
