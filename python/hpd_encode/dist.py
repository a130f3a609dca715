"""Just enough torch.distributed for sharding: rank/world from torchrun's
environment, object all-gather/broadcast and barriers over gloo (CPU; the
coordination traffic is tiny, so no NCCL is needed even on GPUs), and a
timeout so a dead rank never leaves the others waiting forever."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` on rank ``dst`` (None on the others)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        td.gather_object(obj, out, dst=dst)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def close(self, clean: bool = True) -> None:
        """Leave the group. ``clean``: every rank got here normally, so wait
        for the others first (a rank that tears its connections down while
        another still finishes a collective makes gloo abort there)."""
        if self.enabled and self.owns_group:
            import torch.distributed as td

            if td.is_initialized():
                try:
                    if clean:
                        td.barrier()
                finally:
                    td.destroy_process_group()


def init_dist(timeout_s: float = 7200.0) -> Dist:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td

    owns = False
    if not td.is_initialized():
        td.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    return Dist(
        rank=td.get_rank(),
        world_size=td.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        owns_group=owns,
    )
