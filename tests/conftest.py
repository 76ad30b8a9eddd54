"""Shared fixtures: real-data location, small torch thread count, synthetic helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("CELLCLASS_ALLOW_DOWNLOAD", "0")  # tests never download

import torch  # noqa: E402
import torchvision.models  # noqa: E402,F401  (before any viewer loads Mesa's LLVM: see _compat)

# tiny test models gain nothing from more threads, and oversubscription on a busy
# 2-core machine makes them dozens of times slower
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CELLCLASS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real public samples); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set CELLCLASS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _torch_hub_isolated(tmp_path_factory, monkeypatch):
    """Point the torch hub cache at an empty folder so no test sees or fetches real weights."""
    hub = tmp_path_factory.getbasetemp() / "torch-hub"
    hub.mkdir(exist_ok=True)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub), raising=False)
    monkeypatch.setenv("TORCH_HOME", str(hub))
    yield


@pytest.fixture
def one_thread():
    """Tiny nets on a shared CPU train fastest single-threaded (no thread contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
