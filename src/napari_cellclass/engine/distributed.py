"""Data-parallel training across processes (torchrun), in one place.

``torchrun --nproc-per-node N -m napari_cellclass train TASK DATA ...`` starts N
copies of the CLI; :func:`setup` joins them into one process group (NCCL when
the ranks train on CUDA, gloo on CPUs) and pins each rank to its GPU.  The
training loop then calls the few helpers below; nothing here changes a
single-process run (every helper is a no-op when the world has one rank).

How the work is split: every rank walks the task's batches in the same seeded
order and keeps its own slice of each *global* batch (``--batch-size`` stays the
global batch, so the learning rate and schedule mean the same as in one
process).  A ``DataLoader`` is rebuilt so each rank only loads its own indices
(what ``DistributedSampler`` does, but per batch); in-memory batch iterables are
sliced after they are built.  After ``backward`` the gradients of every parameter
the optimizer updates are summed across ranks, each weighted by its rank's share
of the batch, which gives exactly the gradient of the full batch for losses that
average over samples.  We sync gradients ourselves instead of wrapping the model
in ``DistributedDataParallel`` because task losses call model methods
(``forward_with_features``) and some optimise parameters outside the model (loss
centres); both would silently escape DDP.  Batch-norm statistics are computed
per rank (as DDP does by default) and their running averages are averaged across
ranks at the end of each epoch.  Checkpoints, resume files and logs are written
by rank 0 only; validation runs on rank 0 and its metrics are broadcast so every
rank takes the same early-stopping decision.
"""
from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from typing import Any, Iterable, Iterator, Sequence

import torch

TIMEOUT_ENV = "CELLCLASS_DIST_TIMEOUT_S"
_BUCKET_BYTES = 32 * 2**20


# ----------------------------------------------------------------------------- who am I

def env_world_size() -> int:
    """World size torchrun (or a SLURM/MPI launcher that sets the same variables) announced."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched() -> bool:
    """True inside a multi-process launch (``WORLD_SIZE`` > 1)."""
    return env_world_size() > 1


def active() -> bool:
    """True when a process group with more than one rank is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


# ----------------------------------------------------------------------------- start / stop

def setup(device: str | None = None) -> bool:
    """Join the torchrun process group if launched by torchrun; returns whether it did.

    The backend follows the device the ranks will train on: NCCL when CUDA is used
    (each rank is pinned to ``cuda:LOCAL_RANK``), gloo otherwise.  Safe to call
    twice.
    """
    import torch.distributed as dist

    if not launched() or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    pref = (device or os.environ.get("CELLCLASS_DEVICE") or "auto").strip().lower()
    use_cuda = torch.cuda.is_available() and (pref == "auto" or pref.startswith("cuda"))
    if use_cuda:
        n = torch.cuda.device_count()
        torch.cuda.set_device(local_rank() % max(n, 1))
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 3600)))
    kwargs: dict[str, Any] = {"backend": "nccl" if use_cuda else "gloo", "timeout": timeout}
    if use_cuda:
        kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group(**kwargs)
    return True


def cleanup() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def backend() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if active() else None


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------- small collectives

def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (metrics, an output folder name)."""
    import torch.distributed as dist

    if not active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a time budget ran out)."""
    import torch.distributed as dist

    if not active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_floats(values: Sequence[float]) -> list[float]:
    """Element-wise sum of a few numbers over ranks (float64)."""
    import torch.distributed as dist

    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


# ----------------------------------------------------------------------------- batches

def _share(n: int, r: int, w: int) -> slice:
    """Contiguous slice of ``n`` items for rank ``r`` of ``w`` (sizes differ by at most one)."""
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def _field_len(v: Any) -> int | None:
    if isinstance(v, torch.Tensor):
        return int(v.shape[0]) if v.dim() else None
    if isinstance(v, (list, tuple)):
        return len(v)
    if isinstance(v, dict):
        return next((n for n in map(_field_len, v.values()) if n is not None), None)
    return None


def _batch_len(batch: Any) -> int | None:
    """Samples in a batch: a tensor, or a tuple/list/dict of fields (its first sized field)."""
    if isinstance(batch, torch.Tensor):
        return _field_len(batch)
    if isinstance(batch, (list, tuple)):
        return next((n for n in map(_field_len, batch) if n is not None), None)
    if isinstance(batch, dict):
        return _field_len(batch)
    return None


def _slice_field(v: Any, s: slice) -> Any:
    if isinstance(v, torch.Tensor):
        return v[s] if v.dim() else v
    if isinstance(v, list):
        return v[s]
    if isinstance(v, tuple):
        return tuple(v[s])
    if isinstance(v, dict):
        return {k: _slice_field(x, s) for k, x in v.items()}
    return v


def _slice_batch(batch: Any, s: slice) -> Any:
    """One rank's part of a batch: tensors along dim 0, lists of samples by position.

    A batch is a tensor, a dict of fields, or a tuple/list of fields where each field
    is a tensor (B, ...) or a list of B per-sample items (torchvision detection).
    """
    if isinstance(batch, torch.Tensor):
        return batch[s]
    if isinstance(batch, dict):
        return {k: _slice_field(v, s) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice_field(v, s) for v in batch)
    raise TypeError(f"cannot split a batch of type {type(batch).__name__} across ranks")


class ShardedBatches:
    """This rank's slice of every batch of a task's batch iterable.

    ``weight`` is this rank's share of the last global batch (local / global
    samples), used to weight its gradient.  A global batch with fewer samples than
    ranks is skipped by every rank alike (they all see the same batches).
    """

    def __init__(self, batches: Iterable[Any], r: int, w: int):
        self.inner, self.r, self.w = batches, r, w
        self.weight = 1.0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # a task's batcher keeps its own attributes
        return getattr(self.inner, name)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.inner:
            n = _batch_len(batch)
            if n is None:
                raise TypeError("cannot tell the batch size of a training batch to split it across ranks")
            if n < self.w:
                continue
            s = _share(n, self.r, self.w)
            self.weight = (s.stop - s.start) / n
            yield _slice_batch(batch, s)


class _ShardedBatchSampler(torch.utils.data.Sampler):
    """The original batch sampler's index lists, each cut to this rank's share."""

    def __init__(self, inner: Any, r: int, w: int, owner: "ShardedLoader"):
        self.inner, self.r, self.w, self.owner = inner, r, w, owner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for idx in self.inner:
            idx = list(idx)
            if len(idx) < self.w:  # too small to give every rank a sample: all ranks skip it
                continue
            s = _share(len(idx), self.r, self.w)
            # DataLoader workers prefetch: record shares in order, the loop pops them
            self.owner._shares.append((s.stop - s.start) / len(idx))
            yield idx[s]


class ShardedLoader:
    """A ``DataLoader`` rebuilt so this rank loads only its share of every batch."""

    def __init__(self, loader: torch.utils.data.DataLoader, r: int, w: int):
        from collections import deque

        self._shares: Any = deque()
        self.weight = 1.0
        sampler = _ShardedBatchSampler(loader.batch_sampler, r, w, self)
        kw: dict[str, Any] = dict(batch_sampler=sampler, num_workers=loader.num_workers,
                                  collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                                  worker_init_fn=loader.worker_init_fn, generator=loader.generator)
        if loader.num_workers > 0:
            kw.update(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
                      multiprocessing_context=loader.multiprocessing_context)
        self.loader = torch.utils.data.DataLoader(loader.dataset, **kw)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self._shares.clear()
        for batch in self.loader:
            self.weight = self._shares.popleft()
            yield batch


def shard_batches(batches: Iterable[Any]) -> Any:
    """This rank's view of the task's training batches (unchanged in one process)."""
    if not active():
        return batches
    r, w = rank(), world_size()
    if getattr(batches, "shard_after_fetch", False):  # engine/data.py: the global batch, then this rank's share
        return ShardedBatches(batches, r, w)
    if isinstance(batches, torch.utils.data.DataLoader) and batches.batch_sampler is not None:
        return ShardedLoader(batches, r, w)
    return ShardedBatches(batches, r, w)


# ----------------------------------------------------------------------------- gradients and buffers

def trainable_params(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> list[torch.nn.Parameter]:
    """Every parameter the optimizer updates (model and loss), in a rank-independent order."""
    seen: set[int] = set()
    params: list[torch.nn.Parameter] = []
    groups = [g["params"] for g in optimizer.param_groups] if optimizer is not None else [list(model.parameters())]
    for group in groups:
        for p in group:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def sync_gradients(params: Sequence[torch.nn.Parameter], weight: float) -> None:
    """Sum ``weight * grad`` over ranks in place: the full-batch gradient on every rank.

    A parameter without a gradient on this rank (unused in this forward, or the rank
    had no samples) contributes zeros, so every rank makes the same calls.
    """
    import torch.distributed as dist

    if not active():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= _BUCKET_BYTES:
            _reduce_bucket(bucket, weight, dist)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, weight, dist)


def _reduce_bucket(grads: list[torch.Tensor], weight: float, dist: Any) -> None:
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        if weight != 1.0:
            flat.mul_(weight)
        dist.all_reduce(flat)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view(g.shape))
            offset += n


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating-point buffers (batch-norm running stats) over ranks."""
    import torch.distributed as dist

    if not active():
        return
    w = world_size()
    for _, buf in sorted(model.named_buffers(), key=lambda kv: kv[0]):
        if buf.is_floating_point():
            t = buf.detach().clone()
            dist.all_reduce(t)
            buf.copy_(t / w)


# ----------------------------------------------------------------------------- launcher

def strip_nproc(argv: Sequence[str]) -> tuple[list[str], int | None]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``, and N (None when absent)."""
    out: list[str] = []
    n: int | None = None
    it = iter(range(len(argv)))
    skip = False
    for i in it:
        if skip:
            skip = False
            continue
        a = argv[i]
        if a == "--nproc":
            if i + 1 >= len(argv):
                raise ValueError("--nproc needs a number")
            n, skip = int(argv[i + 1]), True
        elif a.startswith("--nproc="):
            n = int(a.split("=", 1)[1])
        else:
            out.append(a)
    return out, n


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command line that runs ``cellclass ARGV`` on ``nproc`` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", "napari_cellclass", *argv]


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``cellclass ARGV`` under torchrun on this machine; returns its exit status."""
    cmd = torchrun_command(argv, nproc)
    print("cellclass: launching " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
    return subprocess.call(cmd)
