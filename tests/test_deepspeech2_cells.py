"""DeepSpeech2's LSTM cell option (``cell="lstm"``): layout, a bad cell's error, training on a
toy CTC task and a grow/prune cycle."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpjax
from gpjax.data import speech
from gpjax.models import DeepSpeech2, deepspeech2_loss

# ============================================================================ vocabulary

# The LSTM option of DeepSpeech2 on a toy CTC task (no eSpeak): each symbol of a 2-3 symbol
# label is 4 frames of its own feature direction, then 2 frames of silence.

LSTM_DS2 = DeepSpeech2(vocab_size=5, conv_features=(4, 4, 4), conv_kernels=((3, 3),) * 3,
                       conv_strides=((1, 1),) * 3, rnn_features=12, num_rnn_layers=1,
                       cell="lstm")


def _toy_ctc_batch(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    frames, width, max_label = 20, 6, 3
    feats = 0.1 * rng.standard_normal((n, frames, width)).astype(np.float32)
    labels = np.zeros((n, max_label), np.int32)
    lengths = rng.integers(2, max_label + 1, size=n)
    for i, k in enumerate(lengths):
        labels[i, :k] = rng.integers(1, 5, size=k)
        for j, c in enumerate(labels[i, :k]):
            feats[i, 6 * j:6 * j + 4, c] += 2.0
    label_pads = speech.lengths_to_paddings(lengths, max_label)
    return feats, np.zeros((n, frames), np.float32), labels, label_pads


def test_ds2_cell_option_layout_and_bad_cell():
    x = jnp.zeros((1, 20, 6))
    v = jax.eval_shape(LSTM_DS2.init, jax.random.key(0), x)
    cell = v["params"]["birnn1"]["forward_rnn"]["cell"]
    assert sorted(cell) == ["hf", "hg", "hi", "ho", "if", "ig", "ii", "io"]
    assert cell["ii"]["kernel"].shape == (24, 12) and cell["hf"]["kernel"].shape == (12, 12)
    hl = jax.eval_shape(LSTM_DS2.clone(cell="hlstm").init, jax.random.key(0), x)
    assert "f_hidden0" in hl["params"]["birnn1"]["forward_rnn"]["cell"]
    with pytest.raises(ValueError, match="cell='bogus' is not one of"):
        LSTM_DS2.clone(cell="bogus").init(jax.random.key(0), x)


def test_ds2_lstm_trains_and_survives_a_prune_grow_cycle():
    """Masked Adam: the CTC loss falls; recoverable pruning of the LSTM kernels keeps every unit
    connected, growth switches connections of them back on, dormant weights stay exactly 0
    through retraining."""
    model = LSTM_DS2
    feats, pads, labels, lpads = (jnp.asarray(a) for a in _toy_ctc_batch(32, seed=0))
    params = jax.jit(model.init)(jax.random.key(0), feats[:1], pads[:1])["params"]
    masks = gpjax.init_masks(params)
    lstm_kernels = [k for k, m in _flat(masks).items() if "cell" in k and m is not None]
    assert len(lstm_kernels) == 16  # 8 kernels x 2 directions, all prunable

    def loss_fn(p, batch):
        return deepspeech2_loss(model, p, *batch)

    tx = gpjax.masked(optax.adam(1e-2))

    @jax.jit
    def step(p, opt, m, batch):
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        up, opt = tx.update(g, opt, p, masks=m)
        return optax.apply_updates(p, up), opt, loss, g

    batch = (feats, pads, labels, lpads)
    opt = tx.init(params)
    losses = []
    for _ in range(120):
        params, opt, loss, _ = step(params, opt, masks, batch)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), \
        losses[::20]

    params, masks = gpjax.prune(params, masks, percentile=70.0, input_fed=model.input_kernels)
    pruned = _flat(masks)
    assert all(0.2 < np.mean(pruned[k]) < 0.4 for k in lstm_kernels)  # ~30% kept per kernel
    dead = gpjax.dead_units(masks, input_fed=model.input_kernels)
    assert all(d == (0, 0) for d in dead.values()), {k: d for k, d in dead.items() if any(d)}
    opt = gpjax.sync_masks(opt, masks)
    # The gradient at params whose dormant entries are 0 is the gradient w.r.t. the effective
    # weights W * M, what accumulate_gradients averages (one batch here: the step's own).
    assert gpjax.dormant_is_zero(params, masks)
    *_, grads = step(params, opt, masks, batch)
    params, masks = gpjax.grow(params, masks, grads, percentile=90.0, learning_rate=1e-2)
    grown = _flat(masks)
    assert sum(int(np.sum(grown[k] & ~pruned[k])) for k in lstm_kernels) > 0
    assert all(np.all(grown[k] | ~pruned[k]) for k in lstm_kernels)  # growth only adds
    for _ in range(10):
        params, opt, loss, _ = step(params, opt, masks, batch)
    assert np.isfinite(float(loss)) and gpjax.dormant_is_zero(params, masks)


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(k): v for k, v in
            jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]}
