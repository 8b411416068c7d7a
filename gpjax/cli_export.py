"""``gpjax export``: a compact, JAX-only inference artifact of a model from the command line.

Examples::

    gpjax export store/ --out artifact/ --test test.npz       # LATEST version of a model store
    gpjax export results/mnist/growprune-seed0 --round 9 --out artifact/   # a gpjax run's round
    gpjax export store/ --out a/ --layers Dense_0/kernel,Dense_1/kernel   # your own Dense chain
    gpjax export store/ --out a/ --platforms cpu,cuda     # one artifact for CPU and NVIDIA GPU

The artifact's layout and loader: :mod:`gpjax.export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpjax._cli_common import UsageError, positive_ints, table


def _model_fn(model, chosen: dict, input_shape):
    """An NNX/Equinox model (its :class:`~gpjax.models.adapter.Adapter`) as the
    :class:`~gpjax.chain.ModelFn` compact reads: evaluation forward with ``aux`` bound, its
    layout, the store's input shape and the kernels in forward order; a linen module as is."""
    from gpjax.chain import ModelFn
    from gpjax.models.adapter import Adapter
    if not isinstance(model, Adapter):
        return model
    import numpy as np
    x = np.zeros((1, *input_shape), np.float32)
    kernels = model.kernel_paths(chosen["params"], chosen["aux"], x)
    return ModelFn(model.forward(chosen["aux"]), model.layout, tuple(input_shape), kernels)


def load_for_export(source: str | Path, *, version: int | None = None,
                    round_index: int | None = None, which: str = "nonrecoverable") -> dict:
    """The model to export from a model store (a version, default LATEST) or a ``gpjax run``
    directory ``DIR/<policy>-seed<seed>`` (a round, default the last): ``{"model", "params",
    "masks", "aux", "input_shape", "source", "num_classes"}``. ``which``: "nonrecoverable"
    (the deployment model; the recoverable one when none was made) or "recoverable"."""
    from gpjax.incremental.loop import load_round_models
    from gpjax.incremental.store import STORE_FILE, ModelStore
    if which not in ("nonrecoverable", "recoverable"):
        raise UsageError(f"--which must be nonrecoverable or recoverable, got {which!r}")
    src = Path(source)
    if (src / STORE_FILE).exists():
        store = ModelStore.open(src)
        m = store.load(version)
        chosen = m.nonrecoverable if which == "nonrecoverable" and m.nonrecoverable else {
            "params": m.params, "masks": m.masks, "aux": m.aux}
        return {"model": _model_fn(m.model, chosen, store.spec["input_shape"]), **chosen,
                "input_shape": store.spec["input_shape"],
                "num_classes": store.spec["num_classes"],
                "source": f"model store {store.path}, version {m.version}"}
    if version is not None:
        raise UsageError(f"--version is for model stores; {src} is not one (use --round)")
    try:
        got = load_round_models(src, round_index)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    chosen = got[which] if got[which] is not None else got["recoverable"]
    return {"model": got["model"], **chosen, "input_shape": got["input_shape"],
            "num_classes": None, "source": f"gpjax run {src}, round {got['round']}"}


def cmd_export(args: argparse.Namespace) -> int:
    import numpy as np

    from gpjax.export import export_from_state
    from gpjax.export.artifact import resolve_platforms
    try:
        platforms = resolve_platforms(args.platforms) if args.platforms else None
    except ValueError as e:
        raise UsageError(f"--platforms: {e}") from None
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out {out} exists; export never overwrites: choose a new directory")
    got = load_for_export(args.source, version=args.version, round_index=args.round,
                          which=args.which)
    test = None
    if args.test is not None:
        from gpjax.data.npz import read_data
        test = read_data(args.test, input_shape=got["input_shape"],
                         num_classes=got["num_classes"]).arrays
    example = np.zeros((1, *got["input_shape"]), np.float32)
    layers = {}
    if args.layers:  # a user's Dense chain: kernel paths in order
        layers = {"layers": [t.strip() for t in args.layers.split(",")],
                  "activation": args.activation}
    manifest = export_from_state(got["model"], got["params"], got["masks"], got["aux"], out,
                                 example_input=example, source=got["source"], test_data=test,
                                 format=args.format, batch_sizes=args.batch_sizes,
                                 repeats=args.repeats, portable=args.portable,
                                 platforms=platforms, **layers)
    print(table([{**manifest, "out": str(out)}],
                 [("out", "artifact", "{}"), ("parameters.active", "active params", "{:,}"),
                  ("parameters.compact_dense", "compact dense params", "{:,}"),
                  ("macs_per_example.dense", "MACs dense", "{:,}"),
                  ("macs_per_example.artifact", "MACs artifact", "{:,}"),
                  ("accuracy.artifact", "test accuracy", "{:.4f}"),
                  ("timings_us.chosen", "computes", "{}")]))
    return 0


def add_export_parser(sub, formatter) -> None:
    """``gpjax export``'s parser."""
    x = sub.add_parser(
        "export", formatter_class=formatter,
        help="write a compact, JAX-only inference artifact of a model",
        description="Compact a model (dead units removed, sparse layers where measured "
                    "faster) and write a jax.export artifact.\n\nExample:\n  gpjax export "
                    "store/ --out artifact/ --test test.npz\n  gpjax export "
                    "results/mnist/growprune-seed0 --round 9 --out artifact/")
    x.add_argument("source", help="a model store, or a gpjax run directory DIR/<policy>-seed<s>")
    x.add_argument("--out", required=True, help="the artifact directory (must not exist)")
    x.add_argument("--version", type=int, default=None, help="store version (default LATEST)")
    x.add_argument("--round", type=int, default=None, help="run round (default: the last)")
    x.add_argument("--which", default="nonrecoverable", choices=("nonrecoverable", "recoverable"),
                   help="the non-recoverable (deployment) model or the recoverable one")
    x.add_argument("--test", default=None, help="a test .npz: accuracy recorded in the manifest")
    x.add_argument("--format", default="jax", choices=("jax", "onnx"),
                   help="onnx also writes model.onnx (needs the onnx extra)")
    x.add_argument("--layers", default=None, metavar="PATH,PATH,...",
                   help="your own model as a chain of Dense layers: its kernel paths in order "
                        "(e.g. Dense_0/kernel,Dense_1/kernel); the zoo's LeNets need none")
    x.add_argument("--activation", default="leaky_relu",
                   help="the activation between the --layers (default leaky_relu)")
    x.add_argument("--batch-sizes", type=positive_ints, default=(1, 32, 1024), metavar="B,B,...",
                   help="batch sizes the per-layer choice is measured at (default 1,32,1024)")
    x.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    x.add_argument("--portable", action="store_true",
                   help="only operations under jax.export's compatibility guarantees (no CSR "
                        "layers: their CPU kernel is a jaxlib custom call)")
    x.add_argument("--platforms", default=None, metavar="P,P,...",
                   help="lower for these platforms (cpu, cuda, rocm, tpu; default: this "
                        "machine's): several make one multi-platform artifact, computed "
                        "compact dense without timing (timed only for one platform present)")
    x.set_defaults(func=cmd_export)
