"""Work split across torchrun ranks for the runs that are not image mode: volume slabs
(:mod:`inverse.volume`) and generated seeds (:mod:`inverse.generate`).

The pattern: rank 0 opens the one run directory and decides what is left to do
(:meth:`RankGroup.on_rank0`); every rank does its share (:meth:`RankGroup.on_every_rank`,
which also waits for all of them); rank 0 writes the results (``on_rank0`` again). In a single
process every step is a plain call.

The objects travel over a gloo group of their own whose collectives wait up to ``WAIT``: the
default group's timeout (30 minutes) can be shorter than a rank waits for the slowest one (a
CPU slab at paper size takes minutes, more with many steps). A rank that dies closes its
connections, so the others do not wait that long for it; under torchrun the launcher also stops
them. A failure on one rank becomes an exception on every rank (the failed rank's own, a
``RuntimeError`` naming it on the others), so all of them stop through the same error path
(``dnnlib.cli.fail``: one line from rank 0).
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch

from torch_utils import distributed as ddp

WAIT = timedelta(days=7)  # how long a rank waits in a collective of RankGroup


class RankGroup:
    """This process' rank, the world size and the gloo wait group (None in a single process)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.group = None
        if self.world > 1:
            import torch.distributed as dist
            self.group = dist.new_group(backend="gloo", timeout=WAIT)

    def share(self, items: list) -> list:
        """This rank's part of ``items``: items rank, rank + world, ... (as images in image mode)."""
        return items[self.rank::self.world]

    def on_rank0(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, its (picklable) result on every rank. If it raises, rank 0 raises it
        again and the other ranks raise a RuntimeError with its message."""
        outcome, error = None, None
        if self.rank == 0:
            try:
                outcome = ("ok", fn())
            except Exception as exc:
                if self.group is None:
                    raise
                outcome, error = ("error", _message(exc)), exc
        outcome = self.broadcast(outcome)
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise RuntimeError(f"rank 0 stopped: {outcome[1]}")
        return outcome[1]

    def on_every_rank(self, fn: Callable[[], Any]) -> list:
        """``fn()`` on every rank, then wait for all of them; every rank's (picklable) result,
        indexed by rank. If it raised on some rank, every rank raises: that rank its own error,
        the others a RuntimeError naming the first rank that failed and its message."""
        result, error = None, None
        try:
            result = fn()
        except Exception as exc:
            if self.group is None:
                raise
            error = exc
        statuses = self.gather(("ok", result) if error is None else ("error", _message(error)))
        if error is not None:
            raise error
        failed = [(r, s[1]) for r, s in enumerate(statuses) if s[0] == "error"]
        if failed:
            raise RuntimeError(f"rank {failed[0][0]} stopped: {failed[0][1]}")
        return [s[1] for s in statuses]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.group is None:
            return obj
        import torch.distributed as dist
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, indexed by rank."""
        if self.group is None:
            return [obj]
        import torch.distributed as dist
        out: list = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def close(self) -> None:
        if self.group is not None:
            import torch.distributed as dist
            dist.destroy_process_group(self.group)
            self.group = None


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@contextmanager
def joined(device: str | torch.device) -> Iterator[RankGroup]:
    """Join the torchrun process group if there is one (:func:`torch_utils.distributed.init`:
    this rank's device) and yield its :class:`RankGroup`; a group this call joined is left at
    the end."""
    own = not ddp.is_initialized()
    ranks = None
    try:
        ranks = RankGroup(ddp.init(device))
        yield ranks
    finally:
        if own and ddp.is_initialized():
            ddp.shutdown()  # every group, the wait group too
        elif ranks is not None:
            ranks.close()
