"""Training batches: one pattern for every task, served by a ``torch.utils.data.DataLoader``.

A task's batches are a :class:`SeededBatches`: ``order()`` draws the epoch's sample
order (its sampler) and ``fetch(indices)`` builds one batch, augmented as a whole by
the task's one batch augmenter (:mod:`napari_cellclass.engine.augment`).
:meth:`SeededBatches.loader` wraps that in a ``DataLoader`` whose sampler and batch
sampler are :class:`EpochOrder` and :class:`Chunks`, so the loop, torchrun sharding and
the scheduler see one kind of object for every task.

Why the batch is fetched and augmented in one call, in the main process: each task draws
its order and its augmentation parameters from its own seeded generator, in a fixed
sequence, so a run is reproducible from ``--seed`` alone and independent of the global
RNG the model's initialisation and dropout use; and under torchrun every process
builds the same *global* batch and keeps its share (``engine/distributed.py``), which
is what makes 2 processes follow the 1-process run. Workers would each need their own
generator and break both properties, so these loaders run in the main process.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch


class SeededBatches:
    """Base of a task's training batches: an epoch ``order()`` and a ``fetch(indices)``.

    Subclasses set ``batch_size`` (and ``min_batch``: smaller batches are skipped, e.g. 2
    for batch norm) and implement :meth:`order`, :meth:`fetch` and ``__len__``.
    Iterating the object itself walks the same batches as its :meth:`loader`.
    """

    batch_size: int = 1
    min_batch: int = 1

    def order(self) -> Sequence[int]:
        """The sample indices of one epoch, in order (draws the epoch's shuffling)."""
        raise NotImplementedError

    def fetch(self, indices: list[int]) -> Any:
        """One batch for these sample indices (augmented when training)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def chunks(self) -> Iterator[list[int]]:
        order = [int(i) for i in self.order()]
        n, bs = len(order), max(1, int(self.batch_size))
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            if len(idx) < self.min_batch <= n:
                continue
            yield idx

    def __iter__(self) -> Iterator[Any]:
        for idx in self.chunks():
            yield self.fetch(idx)

    def loader(self) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` over these batches (sampler :class:`EpochOrder`, batch sampler :class:`Chunks`)."""
        loader = torch.utils.data.DataLoader(
            _Fetch(self), batch_sampler=Chunks(self), collate_fn=_as_is, num_workers=0,
            generator=torch.Generator().manual_seed(0),  # the loader's own seed draw leaves the global RNG alone
        )
        loader.batches = self  # the task's object (its attributes, e.g. a detector's canvas)
        loader.shard_after_fetch = True  # torchrun: build the global batch, then keep this rank's share
        return loader


class EpochOrder(torch.utils.data.Sampler):
    """The sampler: each epoch's order from the task's seeded ``order()``."""

    def __init__(self, batches: SeededBatches):
        self.batches = batches

    def __iter__(self) -> Iterator[int]:
        return iter([int(i) for i in self.batches.order()])

    def __len__(self) -> int:
        return len(self.batches) * max(1, int(self.batches.batch_size))


class Chunks(torch.utils.data.Sampler):
    """The batch sampler: consecutive ``batch_size`` chunks of the epoch order (too-small ones skipped)."""

    def __init__(self, batches: SeededBatches):
        self.batches = batches
        self.sampler = EpochOrder(batches)

    def __iter__(self) -> Iterator[list[int]]:
        return self.batches.chunks()

    def __len__(self) -> int:
        return len(self.batches)


class _Fetch(torch.utils.data.Dataset):
    """The dataset: a whole batch per call (``__getitems__``), as the task builds it."""

    def __init__(self, batches: SeededBatches):
        self.batches = batches

    def __getitems__(self, indices: list[int]) -> Any:
        return self.batches.fetch(list(indices))

    def __getitem__(self, index: int) -> Any:
        return self.batches.fetch([int(index)])

    def __len__(self) -> int:
        return len(self.batches) * max(1, int(self.batches.batch_size))


def _as_is(batch: Any) -> Any:
    """Collation: ``fetch`` already returns the collated, augmented batch."""
    return batch
