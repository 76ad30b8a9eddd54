"""``cellclass``: the headless entry point (folders in, files and JSON out).

Subcommands: demo, synth, train, evaluate, predict, karyotype, info.  Each
dispatches to the task modules in :mod:`napari_cellclass.tasks`; the CLI only
parses arguments, shows progress and turns :class:`CellClassError` into a short
message and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .engine.atomic import keep_earlier_results
from .errors import CellClassError, NotImplementedTaskError

EXIT_USER_ERROR = 2
#: the command ran, but at least one input was refused (one line each on stderr); the others were processed
EXIT_SOME_REFUSED = 3
#: ``evaluate``: a metric is undefined (NaN or infinite; written as null in the JSON)
EXIT_METRIC_UNDEFINED = 4
EXIT_CANCELLED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit code 2), like every other CLI error."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _TrainHelp(argparse.Action):
    """``train --help`` lists the tasks; ``train TASK --help`` adds that task's ``--set`` options."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .tasks.options import format_help

        parser.print_help()
        task = getattr(namespace, "task", None)
        if task:
            print("\n" + format_help(task))
        parser.exit()


def _batch_options(p: argparse.ArgumentParser) -> None:
    """``--shard``/``--chunk``/``--nproc`` for the ``predict`` and ``karyotype`` subcommands
    (batch mode: :mod:`napari_cellclass.tasks.batch`)."""
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="batch mode: run shard I of N (0-based) of the inputs; results stream to --out, "
                        "a re-run skips inputs already done, the last shard merges the tables")
    p.add_argument("--chunk", type=int, default=None, metavar="K",
                   help="batch mode: inputs per task call (default: 1 karyotype, 8 wbc, 16 detect, 64 others)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="batch mode on N local processes (launches torchrun; each process one shard)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default), cuda, cuda:N, mps or cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="task-specific option, repeatable (e.g. --set loss=focal)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-fast", action="store_true",
                   help="fp32 inference: no bf16 on CPUs / no mixed precision on GPUs (docs/performance.md)")


def _train_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--arch", default=None, help="architecture (task-specific)")
    p.add_argument("--size", type=int, default=None, help="input size in pixels")
    p.add_argument("--recipe", type=Path, default=None, help="training recipe YAML/JSON")
    p.add_argument("--pretrained", action="store_true",
                   help="start from ImageNet/COCO weights (cached, or downloaded if CELLCLASS_ALLOW_DOWNLOAD=1)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds a trained model or an interrupted run (replacing it)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny model and budget (smoke test)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train data-parallel on N local processes (launches torchrun; one per GPU)")


def build_parser() -> argparse.ArgumentParser:
    from .tasks.base import TASKS

    parser = _Parser(prog="cellclass", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("demo", help="generate sample data, train small models, predict; write results")
    p.add_argument("--out", type=Path, default=Path("cellclass-demo"))
    p.add_argument("--tasks", default=None, help="comma list of tasks (default: all available)")
    _common(p)

    p = sub.add_parser("synth", help="write a synthetic dataset for a task")
    p.add_argument("task")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    _common(p)

    p = sub.add_parser("train", help="train a model on a dataset folder", add_help=False,
                       description=f"Train a model for TASK, one of: {', '.join(TASKS)}. "
                                   "`cellclass train TASK --help` lists that task's --set options and defaults.")
    p.add_argument("-h", "--help", action=_TrainHelp, help="show this help (after TASK: also the task's options)")
    p.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, default=None, help="run folder (model.safetensors, resume.pt)")
    p.add_argument("--model", type=Path, default=None,
                   help="fine-tune this model (built-in name or checkpoint; chromosome and detect)")
    _train_opts(p)
    _common(p)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset; prints JSON")
    p.add_argument("task")
    p.add_argument("model", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, default=None, help="also write the metrics JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, default=None)
    _common(p)

    p = sub.add_parser("predict", help="run a checkpoint on images; writes results to --out")
    p.add_argument("task")
    p.add_argument("model", type=Path, help="model (built-in name or checkpoint); with --model, the first input")
    p.add_argument("inputs", type=Path, nargs="*")
    p.add_argument("--model", dest="model_option", default=None,
                   help="model (built-in name or checkpoint); then every positional argument is an input")
    p.add_argument("--detector", default=None,
                   help="wbc: the blood-cell detector that finds the white cells (default: the built-in)")
    p.add_argument("--out", type=Path, default=Path("cellclass-out"))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder that already holds results (files of the same name are replaced)")
    _batch_options(p)
    _common(p)

    p = sub.add_parser("karyotype", help="karyotype metaphase spreads")
    p.add_argument("spreads", type=Path, nargs="+")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("cellclass-karyotype"))
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder that already holds results (files of the same name are replaced)")
    _batch_options(p)
    _common(p)

    p = sub.add_parser("info", help="show the device policy and a checkpoint's metadata")
    p.add_argument("model", type=Path, nargs="?")
    _common(p)

    # built-in models: MODEL arguments above also accept their names (see `cellclass models`)
    p = sub.add_parser("models", help="list the built-in models; `models info NAME` prints one card")
    p.add_argument("action", nargs="?", default="list", help="list (default) or info")
    p.add_argument("name", nargs="?", help="built-in model name (for info)")
    p.add_argument("--task", default=None, help="only models for this task")
    p.add_argument("--json", action="store_true", help="print the model cards as a JSON list")

    p = sub.add_parser("export", help="export a model to another format (bioimageio model package)")
    p.add_argument("format", choices=["bioimageio"])
    p.add_argument("model", help="built-in model name or checkpoint")
    p.add_argument("out", type=Path, help="package to write (.zip)")
    p.add_argument("--test-input", type=Path, default=None, help="image for the package's test tensors")

    p = sub.add_parser("import", help="turn a bioimage.io model package back into a checkpoint")
    p.add_argument("format", choices=["bioimageio"])
    p.add_argument("package", type=Path, help="bioimage.io package (.zip) or its rdf.yaml")
    p.add_argument("out", type=Path, nargs="?", default=None,
                   help="checkpoint to write (.safetensors); for another project's package: optional .zip copy")
    p.add_argument("--trust", action="store_true",
                   help="consent to run the package's own Python code (remembered for this exact package)")
    return parser


#: which task's option table checks --set for each command (demo and synth pass them on unchecked)
_OPTION_COMMAND = {"train": "train", "evaluate": "evaluate", "predict": "predict", "karyotype": "predict"}


def _options(args: argparse.Namespace):
    from .tasks.base import TaskOptions
    from .tasks.options import parse_settings

    command = _OPTION_COMMAND.get(args.command)
    task = "karyotype" if args.command == "karyotype" else getattr(args, "task", None)
    # untyped (no task table) for demo/synth/info: the values are parsed as before
    extra = parse_settings(task if command else "", command or "", getattr(args, "extra", []) or [])
    return TaskOptions(
        epochs=getattr(args, "epochs", None),
        batch_size=getattr(args, "batch_size", None),
        lr=getattr(args, "lr", None),
        device=args.device,
        arch=getattr(args, "arch", None),
        out=None if args.command == "evaluate" else getattr(args, "out", None),  # evaluate: --out is the JSON file
        seed=args.seed,
        size=getattr(args, "size", None),
        recipe=getattr(args, "recipe", None),
        pretrained=getattr(args, "pretrained", False),
        workers=getattr(args, "workers", 0),
        quick=getattr(args, "quick", False),
        resume=getattr(args, "resume", False),
        model=getattr(args, "model", None) if isinstance(getattr(args, "model", None), Path) else None,
        extra=extra,
    )


def _check_numbers(args: argparse.Namespace) -> None:
    """``--epochs 0``, ``--batch-size 0``, ``--size 100000``, ``--seed -1``: refused in one line with the range."""
    from .tasks.options import CLI_RANGES, check_range

    for name, spec in CLI_RANGES.items():
        value = getattr(args, name, None)
        if value is not None and not (name == "nproc"):
            try:
                check_range(name, spec, value)
            except CellClassError as exc:
                raise CellClassError(str(exc).replace(f"option {name}:", f"--{name.replace('_', '-')}", 1)) from None


def _no_replacing(args: argparse.Namespace):
    """``predict``/``karyotype`` never replace an earlier result without ``--overwrite`` (docs/cli.md):
    an --out holding files is refused before any work, and no write may replace a file that
    was there before.  A folder bound to a resumable run is exempt: batch mode (``--shard``,
    torchrun; ``OUT/batch.json``) and ``karyotype``'s own ``OUT/karyotype_run.json`` (a re-run
    with the same model and settings skips the spreads done; other settings are refused)."""
    from .engine.atomic import check_no_earlier_results
    from .tasks.batch import resolve_shard

    bound = False
    if args.command == "karyotype":
        from .tasks.karyotype import RUN_FILE

        bound = (Path(args.out) / RUN_FILE).is_file()
    if bound or resolve_shard(getattr(args, "shard", None)) is not None:
        return keep_earlier_results(None)
    check_no_earlier_results(args.out, overwrite=args.overwrite)
    return keep_earlier_results(args.out, enabled=not args.overwrite)


def _drive(job, quiet: bool):
    from .engine.progress import TextProgress, run_sync

    return run_sync(job, None if quiet else TextProgress())


def _check_json_out(out: Path | None) -> None:
    """``evaluate --out`` names the JSON file to write: refused up front when it is a folder."""
    if out is not None and Path(out).is_dir():
        raise CellClassError(f"--out names the JSON file to write, but {out} is a folder; "
                             f"give a file name such as {Path(out) / 'metrics.json'}")


def _finite(obj: Any, where: str = "", bad: list[str] | None = None) -> Any:
    """``obj`` with every NaN/infinite number replaced by None (JSON null); their keys go to ``bad``."""
    import math

    try:
        import numpy as np

        if isinstance(obj, np.generic):
            obj = obj.item()
        elif isinstance(obj, np.ndarray):
            obj = obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, float) and not math.isfinite(obj):
        if bad is not None:
            bad.append(where or "(value)")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", bad) for i, v in enumerate(obj)]
    return obj


def _report_refused(result: Any) -> int:
    """One stderr line per refused input; the exit code (3 when any was refused, else 0)."""
    from .engine.batch import refused_inputs

    refused = refused_inputs(result)
    for r in refused:
        print(f"cellclass: refused: {r['input']}: {r['problem']}", file=sys.stderr)
    if refused:
        print(f"cellclass: {len(refused)} input(s) refused (listed above); the others were processed",
              file=sys.stderr)
    return EXIT_SOME_REFUSED if refused else 0


def _print_json(obj: Any, out: Path | None = None) -> None:
    """Print ``obj`` as JSON; with ``out``, also write it to that file (parent folders made).

    Always valid JSON: NaN and infinities are written as null (never a bare ``NaN``).
    """
    obj = _finite(json.loads(json.dumps(obj, default=str, allow_nan=True)))
    text = json.dumps(obj, indent=2, allow_nan=False)
    print(text)
    if out is not None:
        from .engine.atomic import atomic_path

        out = Path(out)
        _check_json_out(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            tmp.write_text(text + "\n")


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from ._version import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    from .tasks.base import task_function

    if args.command in ("models", "export", "import"):
        return _zoo_command(args)
    if args.command == "predict":  # `predict TASK MODEL INPUT...` or `predict TASK INPUT... --model MODEL`
        if args.model_option is not None:
            args.inputs, args.model = [args.model, *args.inputs], Path(args.model_option)
        if not args.inputs:
            raise CellClassError("predict needs at least one image or folder after the model "
                                 "(or: cellclass predict TASK FOLDER --model NAME)")
    _check_numbers(args)
    _resolve_models(args)
    opts = _options(args)
    if getattr(args, "detector", None):
        from .zoo.loaded import model_file

        opts.extra["detector"] = str(model_file(args.detector, task="detect"))
    quiet = getattr(args, "quiet", False)
    from .engine import distributed

    if getattr(args, "nproc", None) is not None and args.nproc < 1:
        raise CellClassError(f"--nproc must be at least 1, got {args.nproc}")
    if (getattr(args, "nproc", None) or 1) > 1 and not distributed.launched():  # re-run this under torchrun
        return distributed.launch(distributed.strip_nproc(sys.argv[1:] if argv is None else argv)[0], args.nproc)
    if getattr(args, "no_fast", False):  # read by every device policy of this run (and of torchrun's ranks)
        os.environ["CELLCLASS_FAST"] = "0"
    if distributed.launched() and args.command in ("train", "predict", "karyotype"):
        distributed.setup(args.device)  # one process group; rank 0 alone prints and writes
        quiet = quiet or not distributed.is_main()
    if args.command == "demo":
        from .demo import run_demo

        tasks = args.tasks.split(",") if args.tasks else None
        summary = _drive(run_demo(args.out, opts, tasks=tasks), quiet)
        return 0 if summary.get("ok", False) else 1
    if args.command == "synth":
        path = task_function(args.task, "synth")(args.out, args.n, args.seed)
        print(f"wrote synthetic {args.task} data to {path}")
        return 0
    if args.command == "train":
        from .engine.checkpoint import check_run_folder
        from .engine.run import check_no_earlier_run

        check_run_folder(opts.out, args.task, resume=opts.resume, overwrite=args.overwrite)
        check_no_earlier_run(opts.out, args.task, resume=opts.resume, overwrite=args.overwrite)
        if distributed.active() and opts.out is None:  # every rank must write to the same run folder
            import time

            opts.out = Path(distributed.broadcast_object(f"runs/{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"))
        with keep_earlier_results(opts.out, enabled=not (args.overwrite or opts.resume)):  # backstop
            result = _drive(task_function(args.task, "train")(args.data, opts), quiet)
        if distributed.is_main():
            _print_json(result)
        return 0
    if args.command == "evaluate":
        _check_json_out(args.out)  # before minutes of work
        if args.out is not None and not args.overwrite and (Path(args.out).exists() or Path(args.out).is_symlink()):
            from .engine.atomic import ResultExistsError

            raise ResultExistsError("an earlier metrics file is here and would be replaced; nothing was replaced. "
                                    "Pass --overwrite to replace it, or choose another --out", args.out)
        result = _drive(task_function(args.task, "evaluate")(args.model, args.data, opts), quiet)
        undefined: list[str] = []
        _finite(result, "", undefined)
        _print_json(result, args.out)
        for key in undefined:
            print(f"cellclass: metric {key} is undefined (NaN; written as null): no scorable object or "
                  "image behind it", file=sys.stderr)
        refused = _report_refused(result)
        return EXIT_METRIC_UNDEFINED if undefined else refused
    from .tasks import batch

    if args.command == "predict":  # batch.job_for: sharded/resumable with --shard or under torchrun
        with _no_replacing(args):
            result = _drive(batch.job_for(args.task, task_function(args.task, "predict"), args.model, args.inputs,
                                          opts, args), quiet)
        if distributed.is_main():
            _print_json(result)
            return _report_refused(result)
        return 0
    if args.command == "karyotype":
        opts.model = args.model
        with _no_replacing(args):
            result = _drive(batch.job_for("karyotype", task_function("karyotype", "predict"), args.model,
                                          args.spreads, opts, args), quiet)
        if distributed.is_main():
            _print_json(result)
            return _report_refused(result)
        return 0
    if args.command == "info":
        from .engine.device import resolve_device

        print(f"device: {resolve_device(args.device).describe()}")
        if args.model is not None:
            from dataclasses import asdict

            from .engine.checkpoint import read_meta

            _print_json(asdict(read_meta(args.model)))
        return 0
    parser.error(f"unknown command {args.command}")
    return EXIT_USER_ERROR


def _resolve_models(args: argparse.Namespace) -> None:
    """Built-in names -> verified local checkpoints, before any task sees them (paths pass through)."""
    from . import zoo
    from .tasks.base import TASKS, task_function
    from .zoo.loaded import model_file  # the one name -> file step (load_model uses it too)

    if args.command in ("evaluate", "predict") and args.task in TASKS:
        task_function(args.task, args.command)  # "not implemented" comes before any complaint about the model
        if not (args.task == "karyotype" and str(args.model).lower() in ("none", "-")):  # segmentation only
            args.model = model_file(args.model, task=args.task)
    elif args.command == "karyotype":
        args.model = model_file(args.model, task="karyotype")
    elif args.command == "train" and getattr(args, "model", None) is not None:
        args.model = model_file(args.model, task=args.task)
    elif args.command == "info" and args.model is not None:
        args.model = model_file(args.model)
    for i, item in enumerate(getattr(args, "extra", []) or []):  # --set detector_model=NAME
        key, _, value = item.partition("=")
        if key.strip().replace("-", "_") == "detector_model" and value.strip():
            args.extra[i] = f"{key}={model_file(value.strip())}"
    model = getattr(args, "model", None)
    if args.command in ("evaluate", "predict", "karyotype") and isinstance(model, Path) and model.is_file():
        from .engine.checkpoint import read_meta

        try:
            warning = zoo.synthetic_warning(read_meta(model).trained_on)
        except CellClassError:
            warning = ""  # the task reports an unreadable checkpoint itself
        if warning:
            print(f"cellclass: {warning}", file=sys.stderr)


def _zoo_command(args: argparse.Namespace) -> int:
    from . import zoo

    if args.command == "export":
        from .zoo.bioimageio import export_package

        out = export_package(args.model, args.out, test_input=args.test_input)
        print(f"wrote bioimage.io model package {out}")
        return 0
    if args.command == "import":
        from .zoo.bioimageio import import_any

        print(import_any(args.package, args.out, trust=args.trust))
        return 0
    if args.action not in ("list", "info"):
        raise CellClassError(f"unknown models action {args.action!r}: use `cellclass models` or "
                             f"`cellclass models info NAME`")
    if args.action == "info":
        if not args.name:
            raise CellClassError("`cellclass models info NAME` needs a model name (see `cellclass models`)")
        _print_json(zoo.card(args.name))
        return 0
    if args.name:
        raise CellClassError(f"unexpected argument {args.name!r}; did you mean `cellclass models info {args.name}`?")
    cards = zoo.list_models(args.task)
    if args.json:
        _print_json(cards)
        return 0
    if not cards:
        print("no built-in models" + (f" for task {args.task!r}" if args.task else "") + " in this version")
        return 0
    rows = [("name", "task", "classes", "metric", "size")]
    for c in cards:
        metric, value = zoo.primary_metric(c)
        rows.append((c["name"], c["task"], str(len(c["classes"])) if c.get("classes") else "-",
                     f"{metric} {value:.3f}" if metric else "-",
                     (f"{c['size_bytes'] / 2**20:.1f} MB" if c.get("size_bytes") else "bioimage.io download")
                     + (" (url)" if c.get("url") else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print("\nUse a name wherever a model file is accepted; `cellclass models info NAME` shows its card.")
    return 0


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `cellclass ... | head` ends quietly, as CLI tools should
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return run(argv)
    except NotImplementedTaskError as exc:
        print(f"cellclass: not implemented: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except CellClassError as exc:
        from .errors import Cancelled

        if isinstance(exc, Cancelled):
            print(f"\ncellclass: {exc}", file=sys.stderr)
            return EXIT_CANCELLED
        print(f"cellclass: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ncellclass: interrupted; files already written are complete, nothing half-written was kept",
              file=sys.stderr)
        return EXIT_CANCELLED
    except OSError as exc:  # a file or folder the system refused: one line naming it, never a traceback
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"cellclass: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except FloatingPointError as exc:  # training diverged: the message says what to change
        print(f"cellclass: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: still one line (CELLCLASS_DEBUG=1 shows the traceback)
        if os.environ.get("CELLCLASS_DEBUG"):
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"cellclass: error: {type(exc).__name__}: {text} (unexpected; rerun with "
              "CELLCLASS_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
