"""Masked training, evaluation and growth gradients (gpjax.train) and the phases built on them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpjax
from gpjax.data.mnist import load_mnist
from gpjax.incremental.phases import (
    NonFiniteLossError,
    PruneConfig,
    Trainer,
    grow_and_train,
    new_state,
    prune_and_retrain,
)
from gpjax.models import LeNet300
from gpjax.train import (
    OptimizerConfig,
    _train_epoch,
    classifier_task,
    cosine_rates,
    evaluate,
    growth_gradients,
    make_optimizer,
    steps_per_epoch,
    train_epoch,
)

SMALL = LeNet300(hidden=(64, 32))


@pytest.fixture(scope="module")
def mnist_small():
    m = load_mnist()
    train = (jnp.asarray(m.train.images[:1024]), jnp.asarray(m.train.labels[:1024]))
    val = (jnp.asarray(m.validation.images[:500]), jnp.asarray(m.validation.labels[:500]))
    return train, val


@pytest.fixture(scope="module")
def trainer():
    return Trainer(classifier_task(SMALL), make_optimizer(OptimizerConfig()), batch_size=64,
                   eval_batch_size=256, progress=False)


def test_cosine_rates():
    r = cosine_rates(0.1, 4, start=2, total=8)
    np.testing.assert_allclose(r, 0.1 * 0.5 * (1 + np.cos(np.pi * np.arange(2, 6) / 8)), rtol=1e-6)
    assert cosine_rates(1.0, 3)[0] == 1.0


def test_make_optimizer_rejects_unknown():
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        make_optimizer(OptimizerConfig(name="rmsprop"))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_masked_training_learns_and_keeps_dormant_zero(mnist_small, name):
    train, val = mnist_small
    lr = 0.2 if name == "sgd" else 3e-3
    tr = Trainer(classifier_task(SMALL), make_optimizer(OptimizerConfig(name=name)),
                 batch_size=64, progress=False)
    state = new_state(tr, jax.random.key(0), train, density=0.3)
    masks_before = state.masks
    err0 = tr.error(state, val)
    steps = steps_per_epoch(1024, 64)
    losses = []
    for e in range(5):
        state, loss = tr.epoch(state, train, cosine_rates(lr, steps, start=e * steps,
                                                          total=5 * steps), where="test")
        losses.append(loss)
    assert losses[-1] < losses[0]
    assert tr.error(state, val) < min(err0 - 0.3, 0.4)
    assert gpjax.dormant_is_zero(state.params, state.masks)
    chex_masks = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state.masks, masks_before,
                              is_leaf=lambda x: x is None)
    assert all(jax.tree.leaves(chex_masks))


def test_new_masks_do_not_recompile_the_epoch(mnist_small, trainer):
    train, _ = mnist_small
    state = new_state(trainer, jax.random.key(1), train, density=0.5)
    rates = cosine_rates(0.05, steps_per_epoch(1024, 64))
    state, _ = train_epoch(state, train, rates, task=trainer.task, tx=trainer.tx, batch_size=64)
    before = _train_epoch._cache_size()
    for seed in range(3):
        masks = gpjax.init_masks(state.params, density=0.2 + 0.1 * seed,
                                 key=jax.random.key(seed))
        state = state._replace(params=gpjax.apply_masks(state.params, masks), masks=masks)
        state, _ = train_epoch(state, train, rates * (seed + 1), task=trainer.task,
                               tx=trainer.tx, batch_size=64)
    assert _train_epoch._cache_size() == before


def test_evaluate_matches_numpy(mnist_small, trainer):
    _, val = mnist_small
    state = new_state(trainer, jax.random.key(2), val)
    logits = np.asarray(SMALL.apply({"params": state.params}, val[0]))
    expected = np.mean(np.argmax(logits, -1) != np.asarray(val[1]))
    # 500 examples with batch 64 exercise the padded last batch
    got = evaluate(state.params, state.aux, val, task=trainer.task, batch_size=64)
    assert got == pytest.approx(expected, abs=1e-6)


def test_growth_gradients_equal_full_batch_gradient(mnist_small, trainer):
    train, _ = mnist_small
    state = new_state(trainer, jax.random.key(3), train, density=0.2)
    grads = growth_gradients(state, train, task=trainer.task, batch_size=256)

    def full_loss(params):
        return trainer.task.frozen_loss(params, {}, train)

    ref = jax.grad(full_loss)(gpjax.apply_masks(state.params, state.masks))
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-6, rtol=1e-4)
    # dormant connections got real gradients
    k = grads["fc2"]["kernel"]
    assert float(jnp.abs(jnp.where(state.masks["fc2"]["kernel"], 0.0, k)).sum()) > 0


def test_new_state_connect_leaves_no_dead_unit(mnist_small, trainer):
    train, _ = mnist_small
    fed = trainer.task.input_kernels
    plain = new_state(trainer, jax.random.key(4), train, density=0.02)
    fixed = new_state(trainer, jax.random.key(4), train, density=0.02, connect=True)
    assert any(d.inputs + d.outputs for d in gpjax.dead_units(plain.masks, input_fed=fed).values())
    assert not any(d.inputs + d.outputs
                   for d in gpjax.dead_units(fixed.masks, input_fed=fed).values())
    # the repair only adds connections to the same draw, and the new ones start at zero
    for p, f in zip(jax.tree.leaves(plain.masks), jax.tree.leaves(fixed.masks), strict=True):
        assert bool(jnp.all(f | ~p))
    assert gpjax.dormant_is_zero(fixed.params, fixed.masks)


def test_grow_and_train_then_prune(mnist_small, trainer):
    train, val = mnist_small
    state = new_state(trainer, jax.random.key(4), train, density=0.05)
    active0 = gpjax.count_params(state.masks).active
    err0 = trainer.error(state, val)
    state, log = grow_and_train(trainer, state, train, epochs=6, learning_rate=0.2, grow_every=3,
                                percentile=90.0, validation=val)
    assert log.epochs == 6 + 2  # two gradient evaluations count as epochs
    grown = gpjax.count_params(state.masks).active
    assert grown > active0
    assert log.events[-1]["val_error"] < err0 - 0.3
    cfg = PruneConfig(percentile=20.0, max_retrain_epochs=2, tolerance=1.0, patience=2,
                      max_iterations=4)
    pruned, plog = prune_and_retrain(trainer, state, train, val, cfg)
    assert gpjax.count_params(pruned.masks).active < grown
    assert gpjax.dormant_is_zero(pruned.params, pruned.masks)
    # a sparse random seed can leave units empty from the start; pruning must add none
    fed = trainer.task.input_kernels
    assert gpjax.dead_units(pruned.masks, input_fed=fed) == gpjax.dead_units(state.masks,
                                                                              input_fed=fed)
    held = [e for e in plog.events if e["held"]]
    assert held and gpjax.count_params(pruned.masks).active == held[-1]["active"]


def test_prune_phase_stops_at_target(mnist_small, trainer):
    train, val = mnist_small
    state = new_state(trainer, jax.random.key(5), train)
    target = gpjax.count_params(state.masks).active // 2
    cfg = PruneConfig(percentile=30.0, max_retrain_epochs=0, tolerance=100.0, target_params=target)
    pruned, log = prune_and_retrain(trainer, state, train, val, cfg)
    assert gpjax.count_params(pruned.masks).active <= target
    assert len(log.events) == 2  # 0.7 * 0.7 = 0.49 <= 0.5 after two iterations


def test_nan_loss_names_phase_and_epoch(mnist_small):
    train, _ = mnist_small
    tr = Trainer(classifier_task(SMALL), make_optimizer(OptimizerConfig(weight_decay=0.0)),
                 batch_size=64, progress=False)
    state = new_state(tr, jax.random.key(6), train)
    with pytest.raises(NonFiniteLossError, match=r"phase 'grow', epoch 0"):
        grow_and_train(tr, state, train, epochs=2, learning_rate=1e30, grow=False)


def test_demo_end_to_end(tmp_path):
    from experiments import mnist_demo

    out = tmp_path / "demo"
    result = mnist_demo.main(["--out", str(out), "--subset", "1500", "--epochs", "6",
                              "--batch-size", "32", "--lr", "0.2",
                              "--grow-every", "2", "--max-iterations", "3", "--retrain-epochs",
                              "1", "--no-progress", "--no-augment"])
    saved = json.loads((out / "results.json").read_text())
    stages = [r["stage"] for r in saved["rows"]]
    assert stages[0].startswith("initial") and stages[-1] == "non-recoverable pruning"
    rows = {r["stage"]: r for r in result["rows"]}
    initial = rows["initial (10% random mask)"]
    assert initial["dead_units"] == 0  # connect_units repaired the 10% draw
    assert rows["after growth"]["active_params"] > initial["active_params"]
    assert rows["recoverable pruning"]["active_params"] < rows["after growth"]["active_params"]
    assert rows["recoverable pruning"]["dead_units"] <= rows["after growth"]["dead_units"]
    assert (rows["non-recoverable pruning"]["active_params"]
            <= rows["recoverable pruning"]["active_params"])
    assert rows["after growth"]["test_error"] < 20.0
    assert optax  # the optimiser library is what the demo trains with


def test_scan_choice_and_per_step_epoch_equals_scanned(mnist_small):
    # On CPU a loss with XLA convolutions (or a recurrent scan) steps from Python; an MLP keeps
    # the scan, and so does a ResNet whose convolutions are im2col matrix multiplies (the CPU
    # default). Both ways draw the same permutation and keys, so one epoch gives the same
    # parameters.
    from gpjax.models import ResNet18
    from gpjax.train import _key_bits, scan_pays

    train = (mnist_small[0][0][:256], mnist_small[0][1][:256])
    tx = make_optimizer(OptimizerConfig())
    results = {}
    tiny = dict(num_classes=10, small_stem=True, width=4, stage_sizes=(1, 1, 1, 1))
    models = (("mlp", SMALL), ("conv", ResNet18(**tiny, conv_impl="xla")),
              ("im2col", ResNet18(**tiny, conv_impl="im2col")))
    batch = (train[0][:32], train[1][:32])
    for name, model in models:
        task = classifier_task(model)
        if name != "mlp":  # the choice reads the loss's jaxpr: shapes are enough
            params, aux = jax.eval_shape(task.init, jax.random.PRNGKey(0), train)
            results[name] = scan_pays(task, params, aux, batch, jax.random.PRNGKey(1))
            continue
        trainer = Trainer(task, tx, batch_size=32, progress=False)
        st = new_state(trainer, jax.random.PRNGKey(0), train, density=0.5)
        results[name] = scan_pays(task, st.params, st.aux, batch, st.key)
        rates = cosine_rates(0.05, steps_per_epoch(256, 32))
        a, la = train_epoch(jax.tree.map(jnp.copy, st), train, rates, task=task, tx=tx,
                            batch_size=32, scan=True)
        b, lb = train_epoch(jax.tree.map(jnp.copy, st), train, rates, task=task, tx=tx,
                            batch_size=32, scan=False)
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(float(la), float(lb), rtol=1e-5)
        np.testing.assert_array_equal(_key_bits(a.key), _key_bits(b.key))
        assert gpjax.dormant_is_zero(b.params, b.masks)
    assert results == {"mlp": True, "conv": jax.default_backend() != "cpu", "im2col": True}
