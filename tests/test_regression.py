"""Regression through the store: float targets [N] and [N, k], MSE loss, RMSE reported (checked
against numpy on the model's own outputs), error falling over versions as data arrive."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpjax import cli
from gpjax.incremental.store import ModelStore
from gpjax.models.adapter import as_adapter
from gpjax.tasks import REGRESSION_SCALE, make_task
from gpjax.train import evaluate

nnx = pytest.importorskip("flax.nnx")

MODEL_FILE = '''
import jax
from flax import nnx


class Regressor(nnx.Module):
    def __init__(self, outputs: int = 2, width: int = 32, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(6, width, rngs=rngs)
        self.fc2 = nnx.Linear(width, outputs, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.tanh(self.fc1(x)))
'''

SETS = ["first_epochs=3", "new_epochs=4", "all_epochs=6", "grow_every=1",
        "prune.max_iterations=2", "prune.percentile=10", "prune.tolerance=5",
        "nonrecoverable.max_iterations=1", "batch_size=32", "optimizer.name=adam",
        "learning_rate=0.01"]


def _data(rng, n, k):
    """A seeded smooth function of 6 features, ``k`` targets (``[N]`` when k is 0)."""
    w = np.random.default_rng(123).normal(size=(6, max(k, 1)))
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = np.sin(x @ w) + 0.05 * rng.normal(size=(n, max(k, 1)))
    return x, (y[:, 0] if k == 0 else y).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("reg")
    (d / "reg_models.py").write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    for name, n in (("part0", 96), ("part1", 480), ("test", 256)):
        x, y = _data(rng, n, 2)
        np.savez(d / f"{name}.npz", x=x, y=y)
    return d


def test_rmse_is_the_root_of_the_mean_squared_error():
    """evaluate() averages the per-example squared errors, then takes the root: the RMSE of the
    whole set (not a mean of per-batch RMSEs), / REGRESSION_SCALE; [N] targets take [B, 1]
    outputs."""
    class Lin(nnx.Module):
        def __init__(self, *, rngs):
            self.fc = nnx.Linear(6, 1, rngs=rngs)

        def __call__(self, x):
            return self.fc(x)

    from gpjax.models.adapter import from_class
    adapter = from_class(Lin, {})
    task, metrics = make_task("regression", adapter, eval_batch_size=7)
    x, y = _data(np.random.default_rng(1), 50, 0)
    params, aux = task.init(jax.random.PRNGKey(0), (x, y))
    pred = np.asarray(adapter.apply(params, aux, jnp.asarray(x), train=False)[0])[:, 0]
    rmse = math.sqrt(np.mean((pred.astype(np.float64) - y) ** 2))
    assert evaluate(params, aux, (x, y), task=task, batch_size=7) * REGRESSION_SCALE == \
        pytest.approx(rmse, rel=1e-5)
    assert metrics(params, aux, (x, y))["test_error"] == pytest.approx(rmse, rel=1e-5)
    loss, _ = task.loss(params, aux, (x, y), jax.random.PRNGKey(0))
    assert float(loss) == pytest.approx(rmse**2, rel=1e-5)


def test_regression_store_error_falls_over_versions(files, tmp_path, monkeypatch, capsys):
    """`gpjax init --task regression` on 96 examples, an update with 480 more: the test RMSE of
    version 1 is below version 0's; each figure equals the RMSE numpy computes from the
    version's outputs; the pruning phase ran on the RMSE (events recorded)."""
    monkeypatch.chdir(files)
    path = tmp_path / "reg"
    sets = sum((["--set", s] for s in SETS), [])
    assert cli.main(["init", str(path), "--model", "reg_models:Regressor", "--task",
                     "regression", "--data", str(files / "part0.npz"), "--test",
                     str(files / "test.npz"), "--no-progress", *sets]) == 0
    assert cli.main(["update", str(path), "--data", str(files / "part1.npz"), "--test",
                     str(files / "test.npz"), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(path), "--data", str(files / "test.npz")]) == 0
    assert "RMSE" in capsys.readouterr().out
    store = ModelStore.open(path)
    assert store.spec["target_shape"] == [2] and store.spec["num_classes"] is None
    hist = store.history()
    errs = [h["metrics"]["test_error"] for h in hist]
    assert errs[1] < errs[0], errs
    with np.load(files / "test.npz") as z:
        x, y = z["x"], z["y"]
    adapter = as_adapter(store.model)
    for v, h in enumerate(hist):
        m = store.load(v)
        pred = np.asarray(adapter.apply(m.params, m.aux, jnp.asarray(x), train=False)[0])
        rmse = math.sqrt(np.mean((pred.astype(np.float64) - y) ** 2))
        assert h["metrics"]["test_error"] == pytest.approx(rmse, rel=1e-4)
        assert h["prune_curve"] is not None
    # integer targets into this store: refused before anything is written
    np.savez(tmp_path / "ints.npz", x=x, y=np.round(y).astype(np.int64))
    capsys.readouterr()
    assert cli.main(["update", str(path), "--data", str(tmp_path / "ints.npz"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "float targets [N] or [N, k]" in err and "Fix:" in err
    assert ModelStore.open(path).versions() == [0, 1] and not (path / "work").exists()
