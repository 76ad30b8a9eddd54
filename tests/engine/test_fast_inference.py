"""The fast inference path: bf16 on CPUs with native bf16, on by default, off on request."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_cellclass.engine import device as dev_mod
from napari_cellclass.engine import inference as inf
from napari_cellclass.engine.device import resolve_device
from napari_cellclass.engine.progress import run_sync


class Probe(torch.nn.Module):
    """Records the dtype its convolution computes in."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 5)
        self.seen: list[torch.dtype] = []

    def forward(self, x):
        y = self.conv(x)
        self.seen.append(y.dtype)
        return self.head(torch.relu(y).mean((2, 3)))


def _items(n=24):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, 16, 16, generator=g) for _ in range(n)]


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(inf, "_CPU_LOW", {})  # each test measures bf16 against fp32 afresh
    monkeypatch.setattr(inf, "_TRIALS", {})
    monkeypatch.setattr(dev_mod, "cpu_supports_bf16", lambda: True)
    monkeypatch.delenv(dev_mod.FAST_ENV, raising=False)
    monkeypatch.delenv(dev_mod.COMPILE_ENV, raising=False)


def test_on_by_default_only_where_the_cpu_has_native_bf16(bf16_cpu, monkeypatch):
    p = resolve_device("cpu")
    assert p.inference_dtype == torch.bfloat16 and "bf16 inference" in p.describe()
    assert not p.amp  # training stays fp32 on CPU
    monkeypatch.setattr(dev_mod, "cpu_supports_bf16", lambda: False)
    p = resolve_device("cpu")
    assert p.inference_dtype is None and "bf16" not in p.describe()


def test_turned_off_by_argument_or_environment(bf16_cpu, monkeypatch):
    assert resolve_device("cpu", fast=False).inference_dtype is None
    monkeypatch.setenv(dev_mod.FAST_ENV, "0")
    assert resolve_device("cpu").inference_dtype is None
    assert resolve_device("cpu", fast=True).inference_dtype == torch.bfloat16


def test_cpu_flags_are_read_not_guessed(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open
    flags = {"yes": "flags\t\t: fpu sse avx512f avx512_bf16\n", "no": "flags\t\t: fpu sse avx2\n"}
    for answer, text in flags.items():
        f = tmp_path / answer
        f.write_text("processor\t: 0\n" + text)
        monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(f if p == "/proc/cpuinfo" else p, *a, **k))
        dev_mod.cpu_supports_bf16.cache_clear()
        assert dev_mod.cpu_supports_bf16() is (answer == "yes")
    monkeypatch.setattr(builtins, "open", real_open)
    dev_mod.cpu_supports_bf16.cache_clear()


def test_predict_batches_runs_bf16_when_fast_and_fp32_when_not(bf16_cpu, monkeypatch):
    monkeypatch.setattr(inf, "_record_trial", lambda *a: None)  # no fp32 trial batch: bf16 throughout
    model = Probe()
    fast = run_sync(inf.predict_batches(model, _items(), policy=resolve_device("cpu"), preprocess=lambda t: t,
                                        batch_size=8))
    assert set(model.seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights untouched
    assert all(o.dtype == torch.float32 for o in fast)  # outputs come back fp32
    model.seen.clear()
    exact = run_sync(inf.predict_batches(model, _items(), policy=resolve_device("cpu", fast=False),
                                         preprocess=lambda t: t, batch_size=8))
    assert set(model.seen) == {torch.float32}
    with torch.no_grad():
        plain = torch.stack([model(x[None])[0] for x in _items()])
    assert torch.allclose(torch.stack(exact), plain, atol=1e-5)
    fast = torch.stack(fast)
    assert (fast.argmax(1) == plain.argmax(1)).float().mean() >= 0.95
    assert torch.allclose(torch.softmax(fast, 1), torch.softmax(plain, 1), atol=0.02)


def test_compile_is_opt_in_and_done_once_per_model(bf16_cpu, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(m) or m)
    assert not resolve_device("cpu").compile_inference
    monkeypatch.setenv(dev_mod.COMPILE_ENV, "1")
    policy = resolve_device("cpu")
    assert policy.compile_inference and not resolve_device("cpu", fast=False).compile_inference
    model = Probe()
    for _ in range(2):
        run_sync(inf.predict_batches(model, _items(4), policy=policy, preprocess=lambda t: t, batch_size=4))
    assert calls == [model]


def test_cli_no_fast_switch(bf16_cpu, monkeypatch, capsys):
    from napari_cellclass.cli import run

    assert run(["info", "--device", "cpu"]) == 0
    assert "bf16 inference" in capsys.readouterr().out
    monkeypatch.setenv(dev_mod.FAST_ENV, "1")  # restored after the test, whatever --no-fast sets
    assert run(["info", "--device", "cpu", "--no-fast"]) == 0
    assert "bf16 inference" not in capsys.readouterr().out


def test_policy_field_is_a_plain_dataclass_field(bf16_cpu):
    p = dataclasses.replace(resolve_device("cpu"), fast_inference=False)
    assert p.inference_dtype is None


# ----------------------------------------------------------------------------- CUDA (benchmarks/gpu_check.sh runs these)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_cuda
def test_cuda_amp_inference_agrees_with_fp32():
    policy = resolve_device("cuda")
    assert policy.amp and policy.inference_dtype in (torch.bfloat16, torch.float16) and policy.channels_last
    model = Probe()
    fast = torch.stack(run_sync(inf.predict_batches(model, _items(64), policy=policy, preprocess=lambda t: t,
                                                    batch_size=16)))
    assert model.seen[-1] == policy.inference_dtype and fast.dtype == torch.float32
    exact = torch.stack(run_sync(inf.predict_batches(model, _items(64), policy=resolve_device("cuda", fast=False),
                                                     preprocess=lambda t: t, batch_size=16)))
    assert model.seen[-1] == torch.float32
    assert (fast.argmax(1) == exact.argmax(1)).float().mean() >= 0.95
    assert torch.allclose(torch.softmax(fast, 1), torch.softmax(exact, 1), atol=0.02)


@pytest.mark.cuda
@needs_cuda
def test_cuda_training_step_with_amp_and_channels_last(tmp_path):
    from napari_cellclass.engine.checkpoint import CheckpointMeta, load_checkpoint
    from napari_cellclass.engine.training import fit

    policy = resolve_device("cuda")
    model = Probe()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(4)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    meta = lambda best, h: CheckpointMeta(task="t", arch="probe", class_names=list("abcde"), in_channels=3,  # noqa: E731
                                          input_size=[16, 16])
    res = run_sync(fit(model, batches, loss_fn=lambda m, b, e: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                       optimizer=opt, epochs=2, policy=policy, checkpoint_path=tmp_path / "m.safetensors",
                       make_meta=meta))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert model.conv.weight.is_cuda and model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.seen[-1] == policy.amp_dtype  # the forward ran in mixed precision
    assert set(load_checkpoint(res.checkpoint).state_dict) == set(model.state_dict())


def test_near_tied_rows_are_recomputed_in_fp32(bf16_cpu, monkeypatch):
    """Rows whose top-2 logits are closer than the margin come from fp32, so bf16 cannot reorder them."""
    monkeypatch.setattr(inf, "_record_trial", lambda *a: None)  # stay in bf16
    class Tied(torch.nn.Module):
        def forward(self, x):  # classes 0 and 1 tied on odd rows, 0.01 apart on even rows
            logits = torch.tensor([1.0, 1.0, -3.0]).repeat(x.shape[0], 1) + 0 * x.mean((1, 2, 3))[:, None]
            logits[::2, 1] += 0.01
            return logits

    items = _items(8)
    fast = torch.stack(run_sync(inf.predict_batches(Tied(), items, policy=resolve_device("cpu"),
                                                    preprocess=lambda t: t, batch_size=8)))
    assert inf.LAST_RECHECK["rows"] == inf.LAST_RECHECK["rechecked"] == 8  # every row is a near-tie
    assert (fast.argmax(1) == torch.tensor([1, 0] * 4)).all()
    monkeypatch.setenv(dev_mod.RECHECK_ENV, "0")
    run_sync(inf.predict_batches(Tied(), items, policy=resolve_device("cpu"), preprocess=lambda t: t, batch_size=8))
    assert inf.LAST_RECHECK["low_rows"] == 8 and inf.LAST_RECHECK["rechecked"] == 0


def test_cpu_bf16_is_kept_only_where_it_measured_faster(bf16_cpu, monkeypatch):
    """First full batch in bf16, second in fp32 (both are results); the faster one is kept."""
    clock = iter([0.0, 1.0, 10.0, 10.2] + [20.0] * 40)  # bf16 batch: 1.0 s, fp32 batch: 0.2 s
    monkeypatch.setattr(inf.time, "process_time", lambda: next(clock))
    model = Probe()
    run_sync(inf.predict_batches(model, _items(32), policy=resolve_device("cpu"), preprocess=lambda t: t,
                                 batch_size=8))
    assert model.seen == [torch.bfloat16, torch.float32, torch.float32, torch.float32]
    assert list(inf._CPU_LOW.values()) == [False]
    model.seen.clear()  # the choice is remembered for this architecture and input size
    run_sync(inf.predict_batches(model, _items(8), policy=resolve_device("cpu"), preprocess=lambda t: t,
                                 batch_size=8))
    assert model.seen == [torch.float32]
    inf._CPU_LOW.clear()
    clock = iter([0.0, 0.2, 10.0, 11.0] + [20.0] * 40)  # bf16 5x faster: kept
    monkeypatch.setattr(inf.time, "process_time", lambda: next(clock))
    model.seen.clear()
    run_sync(inf.predict_batches(model, _items(32), policy=resolve_device("cpu"), preprocess=lambda t: t,
                                 batch_size=8))
    assert model.seen == [torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16]


def test_batchnorm_is_folded_for_inference_and_refolded_after_a_weight_change():
    """The fast path runs a Conv-BN-folded copy: same outputs, and never stale weights."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=5)
    with torch.no_grad():  # non-trivial BN statistics, so folding has something to fold
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.rand(3, 3, 64, 64)
    f = inf.folded(net)
    assert f is not net and not any(isinstance(m, torch.nn.BatchNorm2d) for m in f.modules())
    with torch.inference_mode():
        assert torch.allclose(f(x), net(x), atol=1e-4)
    assert inf.folded(net) is f  # cached
    with torch.no_grad():
        net.fc.weight.mul_(2.0)  # an optimiser step / load_state_dict changes weights in place
    f2 = inf.folded(net)
    assert f2 is not f
    with torch.inference_mode():
        assert torch.allclose(f2(x), net(x), atol=1e-4)
    net.train()
    assert inf.folded(net) is net  # training mode: BN must keep updating its statistics
    out = run_sync(inf.predict_batches(net.eval(), list(x), policy=resolve_device("cpu", fast=False),
                                       preprocess=lambda t: t, batch_size=2))
    with torch.inference_mode():
        assert torch.allclose(torch.stack(out), net(x), atol=1e-5)
