"""A deterministic, resumable batch sampler that shards each global batch across data-parallel ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class ResumableBatchSampler:
    """Yields index batches forever: epoch `e` is a permutation seeded with `seed + e`.

    Global batch `k` of an epoch is `perm[k*B*W : (k+1)*B*W]`; rank `r` takes its `r`-th slice of size `B`.
    So a run on W ranks sees exactly the samples a 1-rank run with batch B*W sees, and the position is one
    integer (`consumed` micro-batches) that resumes the same stream on any restart.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 consumed: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_samples // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{num_samples} training samples cannot fill one global batch of {self.global_batch} "
                f"(batch_size {batch_size} x {world_size} ranks)"
            )
        self.consumed = consumed

    def position(self, consumed: int) -> tuple[int, int]:
        return divmod(consumed, self.batches_per_epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, batch = self.position(self.consumed)
        while True:
            perm = self._permutation(epoch)
            for k in range(batch, self.batches_per_epoch):
                start = k * self.global_batch + self.rank * self.batch_size
                yield perm[start : start + self.batch_size].tolist()
            epoch, batch = epoch + 1, 0


def eval_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """This rank's share of an evaluation set (every sample seen once across ranks)."""
    return list(range(rank, num_samples, world_size))
