"""Per-task entry points (train / evaluate / predict / synth / demo) behind the CLI and API.

Each task is one module here (``hpa``, ``wbc``, ``detect``, ``chromosome``,
``karyotype``) exposing any of::

    train(data: Path, opts: TaskOptions) -> Job[dict]          # summary incl. "checkpoint"
    evaluate(model: Path, data: Path, opts: TaskOptions) -> Job[dict]   # JSON-able metrics
    predict(model: Path, inputs: list[Path], opts: TaskOptions) -> Job[dict]
    synth(out: Path, n: int, seed: int) -> Path
    demo(out: Path, opts: TaskOptions) -> Job[dict]            # part of `cellclass demo`

A missing function means "not provided by this task": the CLI says so and exits 2.
"""
