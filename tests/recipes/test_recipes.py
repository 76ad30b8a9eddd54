"""Training recipes: every loss, optimiser, schedule, regulariser and activation trains a tiny CNN."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from napari_cellclass.engine.checkpoint import CheckpointMeta, build_from_checkpoint
from napari_cellclass.engine.device import resolve_device
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.engine.training import fit
from napari_cellclass.errors import InputError
from napari_cellclass.models.tiny import build_tiny_cnn
from napari_cellclass.recipes import LOSSES, OPTIMIZERS, SCHEDULES, Recipe, augment_batch, features_and_logits, lr_curve
from napari_cellclass.tasks.base import TaskOptions

N_CLASSES = 3


def _data(n: int = 48, seed: int = 0):
    """Class k = a bright square in region k of a 16x16 noise image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    y = torch.arange(n) % N_CLASSES
    for i in range(n):
        r = int(torch.randint(0, 11, (1,), generator=g))
        c = 5 * int(y[i]) + int(torch.randint(0, 2, (1,), generator=g))
        x[i, 0, r : r + 5, c : c + 5] += 0.7
    return x, y


X, Y = _data()


def _loss_drop(recipe: Recipe, steps: int = 16, multilabel: bool = False) -> tuple[float, float]:
    """Train on the fixed set; return the recipe loss before and after (train mode, fixed seed)."""
    torch.manual_seed(0)
    model = build_tiny_cnn(1, N_CLASSES, width=4)
    recipe.apply_to_model(model)
    loss = recipe.make_loss(N_CLASSES, multilabel=multilabel)
    opt = recipe.make_optimizer(model.parameters())
    sched, per_batch = recipe.make_scheduler(opt, steps_per_epoch=4, epochs=steps // 4)
    reg = recipe.regularizer()
    targets = torch.nn.functional.one_hot(Y, N_CLASSES) if multilabel else Y

    def value() -> torch.Tensor:
        feats, logits = features_and_logits(model, X)
        out = loss(logits, targets, feats)
        return out + reg(model) if reg is not None else out

    def measure() -> float:
        torch.manual_seed(1)
        loss.eval()
        with torch.no_grad():
            v = float(value())
        loss.train()
        return v

    before = measure()
    for i in range(steps):
        idx = torch.arange(i % 4 * 12, i % 4 * 12 + 12)
        xb = augment_batch(X[idx]) if recipe.augment and i % 2 else X[idx]
        feats, logits = features_and_logits(model, xb)
        tb = targets[idx]
        out = loss(logits, tb, feats)
        if reg is not None:
            out = out + reg(model)
        opt.zero_grad()
        out.backward()
        opt.step()
        if sched is not None and per_batch:
            sched.step()
    after = measure()
    assert math.isfinite(after)
    return before, after


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains(loss):
    before, after = _loss_drop(Recipe(loss=loss, lr=1e-2))
    assert after < 0.8 * before, (loss, before, after)


@pytest.mark.parametrize("loss", ["cross_entropy", "focal", "hinge", "label_smoothing"])
def test_multilabel_losses_train(loss):
    before, after = _loss_drop(Recipe(loss=loss, lr=1e-2), multilabel=True)
    assert after < 0.8 * before


LR = {"sgd": 0.2, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05, "adadelta": 1.0,
      "rmsprop": 3e-3, "adam": 1e-2, "adamw": 1e-2}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_trains(optimizer):
    r = Recipe(optimizer=optimizer, lr=LR[optimizer], weight_decay=1e-4)
    before, after = _loss_drop(r)
    assert after < 0.85 * before, (optimizer, before, after)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_trains_and_decays(schedule):
    before, after = _loss_drop(Recipe(schedule=schedule, lr=1e-2, decay_rate=0.7))
    assert after < 0.8 * before
    curve = lr_curve(schedule, steps_per_epoch=10, epochs=10, lr=0.1)
    assert len(curve) == 100 and all(v >= 0 for v in curve)
    if schedule == "constant":
        assert max(curve) == min(curve) == 0.1
    else:
        assert curve[-1] < 0.5 * 0.1, schedule
    if schedule not in ("constant", "noisy_linear_cosine"):
        assert all(b <= a + 1e-12 for a, b in zip(curve, curve[1:])), "deterministic decays never rise"


def test_schedule_shapes():
    pw = lr_curve("piecewise_constant", 10, 10, lr=1.0, milestones=[3, 6], gamma=0.1)
    assert pw[29] == 1.0 and pw[30] == pytest.approx(0.1) and pw[60] == pytest.approx(0.01)
    ex = lr_curve("exponential", 10, 10, lr=1.0, decay_rate=0.5)
    assert ex[10] == pytest.approx(0.5) and ex[20] == pytest.approx(0.25)
    it = lr_curve("inverse_time", 10, 10, lr=1.0, decay_rate=1.0)
    assert it[10] == pytest.approx(0.5) and it[30] == pytest.approx(0.25)
    nat = lr_curve("natural_exp", 10, 10, lr=1.0, decay_rate=1.0)
    assert nat[10] == pytest.approx(math.exp(-1))
    cos = lr_curve("cosine", 10, 10, lr=1.0)
    assert cos[50] == pytest.approx(0.5, abs=1e-6)
    warm = lr_curve("cosine", 10, 10, lr=1.0, warmup_epochs=2)
    assert warm[0] < 0.1 and max(warm) == pytest.approx(1.0, abs=1e-3)
    # noisy linear cosine is reproducible from the seed
    assert lr_curve("noisy_linear_cosine", 5, 4, seed=3) == lr_curve("noisy_linear_cosine", 5, 4, seed=3)


@pytest.mark.parametrize(
    "options",
    [{"l1": 1e-4}, {"dropout": 0.3}, {"dropconnect": 0.3}, {"augment": True}, {"weight_decay": 1e-3},
     {"normalization": "batch_renorm"}],
    ids=lambda d: next(iter(d)),
)
def test_regularisers_train(options):
    before, after = _loss_drop(Recipe(lr=1e-2, **options))
    assert after < 0.8 * before


@pytest.mark.parametrize("activation", ["relu", "prelu", "rrelu", "elu", "softplus"])
def test_activations_swap_and_train(activation):
    r = Recipe(activation=activation, lr=1e-2)
    m = r.apply_to_model(build_tiny_cnn(1, N_CLASSES, width=4))
    kinds = {type(x).__name__.lower() for x in m.modules()}
    assert activation in kinds and (activation == "relu" or "relu" not in kinds)
    before, after = _loss_drop(r)
    assert after < 0.8 * before


def test_l1_penalty_and_dropout_are_training_only():
    r = Recipe(l1=0.5, dropout=0.5, dropconnect=0.5)
    m = r.apply_to_model(build_tiny_cnn(1, N_CLASSES, width=4)).eval()
    assert float(r.regularizer()(m)) > 0
    with torch.no_grad():
        assert torch.equal(m(X[:4]), m(X[:4]))  # eval: deterministic
    assert r.arch_config("tiny_cnn", {"width": 4}) == ("tiny_cnn", {"width": 4})  # same weights layout


def test_from_options_precedence(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("loss: focal\nlr: 0.005\nschedule: cosine\nepochs: 7\nextra:\n  my_task_knob: 3\n")
    opts = TaskOptions(recipe=f, lr=0.02, extra={"optimizer": "adamw", "early_stopping": 5, "activation": "prelu",
                                                 "label_smoothing": "0.1", "unrelated": "x"})
    r = Recipe.from_options(opts, loss="center", optimizer="sgd", epochs=3, batch_size=16)
    assert r.loss == "focal" and r.lr == 0.02 and r.optimizer == "adamw" and r.schedule == "cosine"
    assert r.epochs == 7 and r.batch_size == 16 and r.early_stopping_patience == 5
    assert r.label_smoothing == 0.1 and r.extra["my_task_knob"] == 3 and "unrelated" not in r.extra
    d = r.to_dict()
    json.dumps(d)
    again = Recipe.from_dict(d)
    assert again.to_dict() == d
    j = r.save(tmp_path / "r.json")
    assert Recipe.from_file(j).to_dict() == d


def test_bad_recipes_are_named(tmp_path):
    with pytest.raises(InputError, match="unknown optimizer"):
        Recipe.from_options(TaskOptions(extra={"optimizer": "lion"}))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="bad.json"):
        Recipe.from_file(bad)
    with pytest.raises(InputError, match="does not exist"):
        Recipe.from_file(tmp_path / "missing.yaml")


def test_recipe_drives_fit_with_early_stopping_and_rebuildable_checkpoint(tmp_path):
    """Full path: recipe -> fit (scheduler, regulariser, early stop) -> checkpoint -> rebuild."""
    torch.manual_seed(0)
    r = Recipe(loss="cosface", activation="prelu", schedule="cosine", lr=1e-2, l1=1e-5, early_stopping_patience=1)
    model = r.apply_to_model(build_tiny_cnn(1, N_CLASSES, width=4))
    loss = r.make_loss(N_CLASSES)
    opt = r.make_optimizer(model)
    loader = DataLoader(TensorDataset(X, Y), batch_size=12, shuffle=True)
    sched, per_batch = r.make_scheduler(opt, len(loader), 30)
    arch, cfg = r.arch_config("tiny_cnn", {"in_channels": 1, "num_classes": N_CLASSES, "width": 4})
    evals = iter([0.5, 0.4] + [0.3] * 30)

    def make_meta(best, hist):
        return CheckpointMeta(task="toy", arch=arch, arch_config=cfg, class_names=["a", "b", "c"], in_channels=1,
                              input_size=[16, 16], training={"recipe": r.to_dict()}, metrics=best)

    job = fit(model, loader, loss_fn=lambda m, b, e: loss(m(b[0]), b[1]), optimizer=opt, epochs=30,
              policy=resolve_device("cpu"), evaluate=lambda m, e: {"val": next(evals)}, monitor="val", mode="max",
              scheduler=sched, scheduler_per_batch=per_batch, regularizer=r.regularizer(),
              early_stopping_patience=r.early_stopping_patience, checkpoint_path=tmp_path / "m.safetensors",
              make_meta=make_meta)
    res = run_sync(job)
    assert res.stopped_early and res.epochs_run == 2
    rebuilt, meta = build_from_checkpoint(tmp_path / "m.safetensors")
    assert meta.training["recipe"]["loss"] == "cosface"
    assert any(isinstance(m, torch.nn.PReLU) for m in rebuilt.modules())
