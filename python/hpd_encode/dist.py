"""Just enough torch.distributed for sharding: rank/world from torchrun's
environment, object all-gather/broadcast and barriers over gloo (CPU; the
coordination traffic is tiny, so no NCCL is needed even on GPUs), and a
timeout so a dead rank never leaves the others waiting forever."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpd_encode.errors import OptionError


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

    def all_gather_array(self, arr: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``arr`` (1-D, the same dtype on every rank, any length), as raw bytes
        over gloo: no pickling, which copies a large array several times."""
        if not self.enabled:
            return [arr]
        import torch
        import torch.distributed as td

        data = _as_bytes(arr)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        td.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64))
        most = max(int(t) for t in sizes)
        if most == 0:  # every rank's is empty (all know it): nothing to send
            return [arr[:0].copy() for _ in range(self.world_size)]
        padded = torch.zeros(most, dtype=torch.uint8)
        padded[: len(data)] = torch.from_numpy(data)
        out = [torch.empty(most, dtype=torch.uint8) for _ in range(self.world_size)]
        td.all_gather(out, padded)
        return [_from_bytes(t.numpy()[: int(k)], arr.dtype) for t, k in zip(out, sizes)]

    def all_to_all_arrays(self, parts: list[np.ndarray]) -> list[np.ndarray]:
        """Send ``parts[k]`` to rank ``k`` (1-D arrays of one dtype, the same on every rank);
        returns what each rank sent to this one, by rank. Raw bytes over gloo."""
        if not self.enabled:
            return list(parts)
        import torch
        import torch.distributed as td

        if len(parts) != self.world_size:
            raise OptionError(f"{len(parts)} parts for {self.world_size} ranks")
        dtype = parts[0].dtype
        chunks = [_as_bytes(p) for p in parts]
        send_sizes = torch.tensor([len(c) for c in chunks], dtype=torch.int64)
        recv_sizes = torch.empty(self.world_size, dtype=torch.int64)
        td.all_to_all_single(recv_sizes, send_sizes)
        data = torch.from_numpy(np.concatenate(chunks)) if chunks else torch.empty(0, dtype=torch.uint8)
        out = torch.empty(int(recv_sizes.sum()), dtype=torch.uint8)
        td.all_to_all_single(out, data, recv_sizes.tolist(), send_sizes.tolist())
        got = out.numpy()
        bounds = np.concatenate([[0], np.cumsum(recv_sizes.numpy())])
        return [_from_bytes(got[a:b], dtype) for a, b in zip(bounds[:-1], bounds[1:])]

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


def _as_bytes(arr: np.ndarray) -> np.ndarray:
    """A 1-D array's bytes as a uint8 array (a view when contiguous)."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def _from_bytes(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """:func:`_as_bytes` undone (a copy: the received buffer is shared)."""
    return data.copy().view(dtype)


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
