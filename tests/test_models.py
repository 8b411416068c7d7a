"""Tests of the model zoo (gpjax.models): sizes, shapes, the H-LSTM equations, DeepSpeech2's
padding and CTC plumbing, training on offline data, and grow/prune through the core API."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpjax
import gpjax.metrics
from gpjax.data.images import load_mnist_images
from gpjax.data.mnist import load_mnist
from gpjax.data.speech import decode_ids, load_synthetic_an4
from gpjax.masks import path_str
from gpjax.models import (
    GATES,
    DeepSpeech2,
    HLSTMCell,
    LeNet5,
    LeNet300,
    ResNet18,
    ctc_loss,
    deepspeech2_loss,
    greedy_ctc_decode,
    leaky_relu,
    max_pool_2x2,
    output_lengths,
)


def n_params(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@contextlib.contextmanager
def count_compiles() -> Iterator[list[int]]:
    """Counts XLA compilations (backend compiles) inside the block."""
    box = [0]

    def listener(name: str, _secs: float, **_kw: Any) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            box[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield box
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# ------------------------------------------------------------------------- sizes and shapes


def test_parameter_counts_pinned():
    key = jax.random.key(0)
    img = jnp.zeros((1, 28, 28, 1))
    assert n_params(jax.eval_shape(LeNet300().init, key, img)) == 266_610
    # 784*300+300 + 300*100+100 + 100*10+10
    assert 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    # Classic LeNet-5 (28x28 zero-padded to 32x32): 156 + 2416 + 48120 + 10164 + 850.
    assert n_params(jax.eval_shape(LeNet5().init, key, img)) == 61_706
    resnet = jax.eval_shape(ResNet18().init, key, jnp.zeros((1, 224, 224, 3)))
    assert n_params(resnet["params"]) == 11_689_512  # torchvision's resnet18
    assert n_params(resnet["batch_stats"]) == 9_600  # running mean/var of 20 BN layers
    small = jax.eval_shape(ResNet18(num_classes=10, small_stem=True).init, key,
                           jnp.zeros((1, 32, 32, 3)))
    # stem 7x7x3x64 -> 3x3x3x64 and a 10-way head instead of 1000-way.
    assert n_params(small["params"]) == 11_689_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - 513 * 990
    # On the 26 MFCCs per frame of gpjax.data.speech (NUM_MFCC): 26 -> 13 -> 7 -> 7 bins.
    ds2 = jax.eval_shape(DeepSpeech2().init, key, jnp.zeros((1, 100, 26)))
    assert n_params(ds2) == 52_832_925


def test_full_size_forward_shapes():
    key = jax.random.key(0)
    resnet = ResNet18()
    v = jax.eval_shape(resnet.init, key, jnp.zeros((1, 224, 224, 3)))
    out = jax.eval_shape(functools.partial(resnet.apply, train=False), v,
                         jnp.zeros((2, 224, 224, 3)))
    assert out.shape == (2, 1000)
    ds2 = DeepSpeech2()
    v = jax.eval_shape(ds2.init, key, jnp.zeros((1, 100, 26)))
    logits, pads = jax.eval_shape(ds2.apply, v, jnp.zeros((3, 101, 26)), jnp.zeros((3, 101)))
    assert logits.shape == (3, 51, 29) and pads.shape == (3, 51)
    # The 800-wide H-LSTM gate MLPs: [x_t (32 channels x 7 MFCC bins), h] -> 800 -> 800.
    cell = v["params"]["birnn1"]["forward_rnn"]["cell"]
    assert cell["f_hidden0"]["kernel"].shape == (32 * 7 + 800, 800)
    assert cell["g_out"]["kernel"].shape == (800, 800)
    small = ResNet18(num_classes=10, small_stem=True)
    x = jnp.zeros((2, 32, 32, 1))
    v = jax.eval_shape(small.init, key, x)
    assert jax.eval_shape(functools.partial(small.apply, train=False), v, x).shape == (2, 10)


def test_lenets_accept_flat_and_image_inputs():
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    for model in (LeNet300(), LeNet5()):
        v = numpy_init(model, x)
        apply = jax.jit(model.apply)
        a = apply(v, x)
        b = apply(v, x.reshape(3, 784))
        assert a.shape == (3, 10)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_leaky_relu_slope():
    x = jnp.array([-2.0, -0.5, 0.0, 3.0])
    np.testing.assert_allclose(leaky_relu(x), [-0.02, -0.005, 0.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 5, 2)])
def test_reshape_max_pool_matches_nn_max_pool(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    ref = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(max_pool_2x2(x), ref)


def test_every_kernel_is_rank2_plus_and_input_kernels_match():
    """Each model's ``input_kernels`` select exactly its first layer, with or without the
    top-level ``params`` key; every kernel is rank >= 2 and every other leaf rank 1."""
    for case in CASES.values():
        variables = case.variables()
        for tree in (variables, variables["params"]):
            names = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
            hits = [n for n in names if any(fnmatch.fnmatchcase(n, pat)
                                            for pat in case.model.input_kernels)]
            assert len(hits) == 1 and hits[0].endswith(case.first_layer + "/kernel"), hits
        for p, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
            assert (leaf.ndim >= 2) == path_str(p).endswith("kernel"), path_str(p)


# ---------------------------------------------------------------------------------- H-LSTM


def _np_hlstm(params: dict, xs: np.ndarray, num_hidden_layers: int) -> np.ndarray:
    """Step-by-step numpy H-LSTM: the cell's equations written out, with its parameters."""
    p = jax.tree.map(np.asarray, params)
    batch, steps, _ = xs.shape
    width = p["f_out"]["bias"].shape[0]
    c, h = np.zeros((batch, width)), np.zeros((batch, width))
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    outs = []
    for t in range(steps):
        z = np.concatenate([xs[:, t], h], axis=1)
        pre = {}
        for g in "fiog":
            y = z
            for layer in range(num_hidden_layers):
                y = y @ p[f"{g}_hidden{layer}"]["kernel"] + p[f"{g}_hidden{layer}"]["bias"]
                y = np.where(y >= 0, y, 0.01 * y)
            pre[g] = y @ p[f"{g}_out"]["kernel"] + p[f"{g}_out"]["bias"]
        c = sig(pre["f"]) * c + sig(pre["i"]) * np.tanh(pre["g"])
        h = sig(pre["o"]) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, axis=1)


@pytest.mark.parametrize("num_hidden_layers", [1, 2])
def test_hlstm_matches_numpy_reference_under_nn_rnn(num_hidden_layers):
    cell = HLSTMCell(6, hidden_features=5, num_hidden_layers=num_hidden_layers)
    rnn = nn.RNN(cell)
    xs = np.random.default_rng(0).normal(size=(2, 7, 3)).astype(np.float32)
    v = numpy_init(rnn, xs)
    cellp = v["params"]["cell"]
    # One Dense per layer per gate (never fused): in -> hidden -> features.
    assert sorted(cellp) == sorted(f"{g}_{s}" for g in GATES
                                   for s in [*(f"hidden{k}" for k in range(num_hidden_layers)),
                                             "out"])
    assert cellp["i_hidden0"]["kernel"].shape == (3 + 6, 5)
    assert cellp["o_out"]["kernel"].shape == (5, 6)
    out = jax.jit(rnn.apply)(v, xs)
    np.testing.assert_allclose(out, _np_hlstm(cellp, xs, num_hidden_layers), rtol=1e-4,
                               atol=1e-5)
    # Scanned: one `scan` in the program, whose size does not grow with the sequence length.
    jaxpr = lambda n: str(jax.make_jaxpr(rnn.apply)(v, jnp.zeros((2, n, 3))))  # noqa: E731
    assert "scan" in jaxpr(7)
    assert len(jaxpr(50)) < 1.1 * len(jaxpr(5))


def test_hlstm_bidirectional_with_lengths_matches_reference():
    bi = nn.Bidirectional(nn.RNN(HLSTMCell(4, hidden_features=3)),
                          nn.RNN(HLSTMCell(4, hidden_features=3)))
    xs = np.random.default_rng(1).normal(size=(2, 6, 3)).astype(np.float32)
    lengths = np.array([6, 4])
    v = numpy_init(bi, xs)
    out = np.asarray(jax.jit(functools.partial(bi.apply, seq_lengths=lengths))(v, xs))
    assert out.shape == (2, 6, 8)
    fwd = v["params"]["forward_rnn"]["cell"]
    bwd = v["params"]["backward_rnn"]["cell"]
    np.testing.assert_allclose(out[:, :, :4], _np_hlstm(fwd, xs, 1), rtol=1e-4, atol=1e-5)
    for b, n in enumerate(lengths):  # backward: the real frames reversed, re-reversed
        ref = _np_hlstm(bwd, xs[b:b + 1, :n][:, ::-1], 1)[0, ::-1]
        np.testing.assert_allclose(out[b, :n, 4:], ref, rtol=1e-4, atol=1e-5)


def test_hlstm_dropout_uses_the_dropout_rng():
    xs = jnp.ones((1, 5, 3))
    cell = HLSTMCell(4, dropout_rate=0.5, deterministic=False)
    rnn = nn.RNN(cell, split_rngs={"params": False, "dropout": True})
    v = numpy_init(rnn, xs)
    apply = jax.jit(lambda v, k: rnn.apply(v, xs, rngs={"dropout": k}))
    run = lambda k: np.asarray(apply(v, jax.random.key(k)))  # noqa: E731
    a, b = run(2), run(3)
    np.testing.assert_array_equal(a, run(2))
    assert not np.allclose(a, b)
    clean = np.asarray(jax.jit(nn.RNN(cell.clone(deterministic=True)).apply)(v, xs))
    assert not np.allclose(a, clean)
    with pytest.raises(Exception, match="dropout"):
        rnn.apply(v, xs)


# ----------------------------------------------------------------------------- DeepSpeech2

# One bidirectional H-LSTM layer instead of three keeps the CPU compile time of the training,
# grow and prune tests affordable; the full configuration is shape-tested above.
TINY_DS2 = DeepSpeech2(vocab_size=5, conv_features=(4, 4, 4), conv_kernels=((3, 3),) * 3,
                       conv_strides=((2, 1), (1, 1), (1, 1)), rnn_features=12,
                       rnn_hidden_features=12, num_rnn_layers=1, dropout_rate=0.2)


def test_ds2_output_lengths_and_padding_invariance():
    model = DeepSpeech2(vocab_size=5, conv_features=(3, 3, 3), conv_kernels=((3, 3),) * 3,
                        conv_strides=((2, 2), (2, 1), (1, 1)), rnn_features=4,
                        num_rnn_layers=1)
    assert model.output_lengths(np.array([1, 4, 5, 8, 9])).tolist() == [1, 1, 2, 2, 3]
    assert output_lengths(np.array([17]), [2, 2, 1]).tolist() == [5]
    rng = np.random.default_rng(0)
    utt = rng.normal(size=(1, 9, 6)).astype(np.float32)
    v = numpy_init(model, utt)
    apply = jax.jit(model.apply)
    short, short_pad = apply(v, utt, jnp.zeros((1, 9)))
    # The same utterance followed by 7 frames of junk marked as padding.
    long_x = np.concatenate([utt, 100 * rng.normal(size=(1, 7, 6))], axis=1).astype(np.float32)
    long_pad = np.concatenate([np.zeros((1, 9)), np.ones((1, 7))], axis=1).astype(np.float32)
    long, long_out_pad = apply(v, long_x, long_pad)
    assert short.shape == (1, 3, 5) and long.shape == (1, 4, 5)
    np.testing.assert_array_equal(long_out_pad, [[0, 0, 0, 1]])
    np.testing.assert_allclose(long[:, :3], short, rtol=1e-4, atol=1e-5)
    assert not np.any(short_pad)


def test_ctc_loss_prefers_the_right_labels():
    # Frames spell 1 _ 2 2 (-> "1 2"), the last frame padded.
    logits = np.full((1, 5, 4), -4.0, np.float32)
    for t, c in enumerate([1, 0, 2, 2, 3]):
        logits[0, t, c] = 4.0
    pads = np.array([[0, 0, 0, 0, 1]], np.float32)
    right = ctc_loss(logits, pads, np.array([[1, 2]]), np.zeros((1, 2)))
    wrong = ctc_loss(logits, pads, np.array([[2, 1]]), np.zeros((1, 2)))
    assert float(right) < 1.0 < float(wrong)
    assert greedy_ctc_decode(logits, pads) == [[1, 2]]


def synthetic_speech(n: int, seed: int, vocab: int = 5, feat: int = 8,
                     max_frames: int = 24) -> tuple[np.ndarray, ...]:
    """A learnable stand-in for speech: each character is a noisy 3-4 frame pattern, characters
    separated by 1-2 'silence' frames; 2-3 characters per utterance, padded to max_frames."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(123).normal(size=(vocab, feat)) * 1.5  # row 0: silence
    x = np.zeros((n, max_frames, feat), np.float32)
    pads = np.ones((n, max_frames), np.float32)
    labels = np.zeros((n, 3), np.int32)
    label_pads = np.ones((n, 3), np.float32)
    for b in range(n):
        chars = rng.integers(1, vocab, rng.integers(2, 4))
        frames = [0] * int(rng.integers(1, 3))
        for c in chars:
            frames += [int(c)] * int(rng.integers(3, 5)) + [0] * int(rng.integers(1, 3))
        frames = frames[:max_frames]
        x[b, :len(frames)] = patterns[frames] + 0.3 * rng.normal(size=(len(frames), feat))
        pads[b, :len(frames)] = 0
        labels[b, :len(chars)] = chars
        label_pads[b, :len(chars)] = 0
    return x, pads, labels, label_pads


# ------------------------------------------------------- training, grow/prune, dead units


def image_loss(model: nn.Module, variables: Any, batch: tuple, train: bool,
               key: jax.Array | None) -> tuple[jax.Array, Any]:
    x, y = batch
    stats = None
    if train and "batch_stats" in variables:
        logits, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
        stats = updated["batch_stats"]
    else:
        logits = model.apply(variables, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), stats


def speech_loss(model: nn.Module, variables: Any, batch: tuple, train: bool,
                key: jax.Array | None) -> tuple[jax.Array, Any]:
    return deepspeech2_loss(model, variables, *batch, train=train, rng=key), None


@functools.cache
def mnist_subset(size: int) -> tuple[np.ndarray, np.ndarray]:
    """512 MNIST training images, 28x28x1 (size 28) or zero-padded to size x size x 1."""
    if size == 28:
        train = load_mnist().train
        return train.images[:512], train.labels[:512]
    split = load_mnist_images(size=size, channels=1).train.subset(np.arange(512)).to_split()
    return split.images, split.labels


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    model: nn.Module
    first_layer: str
    data: Callable[[], tuple[np.ndarray, ...]]
    loss: Callable[..., tuple[jax.Array, Any]]
    steps: int
    batch: int
    lr: float

    def variables(self) -> Any:
        return _init(self)

    def batches(self, n: int, offset: int = 0) -> list[tuple[np.ndarray, ...]]:
        data = self.data()
        size = len(data[0])
        out = []
        for k in range(offset, offset + n):
            start = (k * self.batch) % (size - self.batch + 1)
            out.append(tuple(a[start:start + self.batch] for a in data))
        return out

    @functools.cached_property
    def loss_fn(self) -> Callable[[Any, Any], jax.Array]:
        """The pure ``loss_fn(params, batch)`` for the core (one object, so one compile)."""
        return lambda variables, batch: self.loss(self.model, variables, batch, False, None)[0]


def numpy_init(model: nn.Module, *args: Any, seed: int = 0, **kwargs: Any) -> Any:
    """Variables shaped as ``model.init`` makes them, filled in numpy: LeCun-normal kernels,
    N(0, 0.1^2) biases, zero BN means, unit BN scales and variances. (Compiling ``model.init``
    costs more CPU time than these tests can spend; the size tests trace it.)"""
    rng = np.random.default_rng(seed)

    def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path_str(path)
        if leaf.ndim >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name.endswith(("scale", "var")):
            return np.ones(leaf.shape, np.float32)
        if name.endswith("mean"):
            return np.zeros(leaf.shape, np.float32)
        return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)  # biases

    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    shapes = jax.eval_shape(functools.partial(model.init, **kwargs), keys, *args)
    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def _init(case: Case) -> Any:
    return numpy_init(case.model, case.data()[0][:2])


CASES: dict[str, Case] = {
    "lenet300": Case(LeNet300(), "fc1", lambda: mnist_subset(28), image_loss, 60, 64, 3e-3),
    "lenet5": Case(LeNet5(), "conv1", lambda: mnist_subset(28), image_loss, 40, 64, 3e-3),
    # ResNet-18's blocks (small stem) at 1/16 width, one block per stage: every kind of
    # kernel it has (stem, 3x3 pairs, 1x1 projection shortcuts, head) at half the compile time;
    # the full layout's size is checked above and its function in tests/test_conv.py.
    "resnet18": Case(ResNet18(num_classes=10, small_stem=True, width=4, stage_sizes=(1, 1, 1, 1)),
                     "stem_conv",
                     lambda: mnist_subset(32), image_loss, 40, 32, 1e-2),
    "deepspeech2": Case(TINY_DS2, "conv1", functools.cache(lambda: synthetic_speech(256, 0)),
                        speech_loss, 100, 32, 1e-2),
}


@functools.cache
def make_step(case: Case, tx: optax.GradientTransformation) -> Callable:
    @jax.jit
    def step(variables, opt_state, masks, batch, key):
        def f(v):
            return case.loss(case.model, v, batch, True, key)

        (loss, stats), grads = jax.value_and_grad(f, has_aux=True)(variables)
        updates, opt_state = tx.update(grads, opt_state, variables, masks=masks)
        variables = optax.apply_updates(variables, updates)
        if stats is not None:
            variables = {**variables, "batch_stats": stats}
        return variables, opt_state, loss

    return step


def _run(step: Callable, state: tuple, batches: list, key: int) -> tuple[tuple, list[float]]:
    variables, opt_state, masks = state
    losses = []
    for k, batch in enumerate(batches):
        variables, opt_state, loss = step(variables, opt_state, masks, batch,
                                          jax.random.key(key * 100_000 + k))
        losses.append(float(loss))
    return (variables, opt_state, masks), losses


@functools.cache
def _tx(lr: float) -> optax.GradientTransformation:
    return gpjax.masked(optax.adam(lr))


# DeepSpeech2's case (~35 s) is in `make test-all` only: the suite is at CI's 15 min edge.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "deepspeech2"
                                  else n for n in CASES])
def test_trains_then_grows_and_prunes_without_recompiling(name):
    """From a 50%-pruned start: the loss falls under masked training; then two
    grow -> train -> prune -> train cycles through the core API, the second compiling
    nothing; grow adds and prune removes connections, no unit dies, dormant weights stay 0."""
    case = CASES[name]
    variables = case.variables()
    variables, masks = gpjax.prune(variables, gpjax.init_masks(variables), percentile=50.0,
                                   input_fed=case.model.input_kernels)
    tx = _tx(case.lr)
    step = make_step(case, tx)
    state = (variables, tx.init(variables), masks)
    state, losses = _run(step, state, case.batches(case.steps), key=0)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert np.all(np.isfinite(losses))
    assert last < 0.6 * first, (name, first, last)

    stacked = jax.tree.map(lambda *a: np.stack(a), *case.batches(4, offset=7))
    compiles = []
    for cycle, (alpha, beta) in enumerate([(50.0, 30.0), (70.0, 20.0)]):
        with count_compiles() as box:
            variables, opt_state, masks = state
            before = gpjax.count_params(masks).active
            grads = gpjax.accumulate_gradients(case.loss_fn, variables, masks, stacked)
            variables, masks = gpjax.grow(variables, masks, grads, percentile=alpha,
                                          learning_rate=case.lr)
            grown = gpjax.count_params(masks).active
            state, _ = _run(step, (variables, opt_state, masks), case.batches(2), key=1 + cycle)
            variables, opt_state, masks = state
            variables, masks = gpjax.prune(variables, masks, percentile=beta,
                                           input_fed=case.model.input_kernels)
            pruned = gpjax.count_params(masks).active
            state, _ = _run(step, (variables, opt_state, masks), case.batches(2), key=3 + cycle)
        compiles.append(box[0])
        assert before < grown, (name, before, grown)
        assert pruned < grown, (name, grown, pruned)
        dead = gpjax.dead_units(state[2], input_fed=case.model.input_kernels)
        assert all(d == (0, 0) for d in dead.values()), dead
        assert gpjax.dormant_is_zero(state[0], state[2])
    assert compiles[1] == 0, compiles
    assert step._cache_size() == 1


def test_ds2_learns_to_transcribe_the_synthetic_task_with_greedy_decoding():
    """After the training of the test above, decoded outputs are mostly right (CER < 0.5).
    Runs its own short training so it does not depend on test order."""
    case = CASES["deepspeech2"]
    variables = case.variables()
    masks = gpjax.init_masks(variables, density=1.0)
    tx = _tx(case.lr)
    step = make_step(case, tx)
    state, _ = _run(step, (variables, tx.init(variables), masks), case.batches(case.steps), 9)
    x, pads, labels, label_pads = synthetic_speech(32, seed=99)
    logits, out_pads = jax.jit(case.model.apply)(state[0], x, pads)
    hyp = greedy_ctc_decode(logits, out_pads)
    ref = [[int(c) for c, p in zip(row, prow, strict=True) if p == 0]
           for row, prow in zip(labels, label_pads, strict=True)]
    errors = sum(gpjax.metrics.edit_distance(r, h) for r, h in zip(ref, hyp, strict=True))
    assert errors / sum(len(r) for r in ref) < 0.5, (ref[:4], hyp[:4])


# DeepSpeech2 on the offline speech data: the tiny eSpeak corpus of the
# ds2_hlstm_synthetic_tiny config (50 training utterances of up to 404 MFCC frames, cached under
# the data dir). A 4x time stride (101 output frames) and one bidirectional H-LSTM layer of 32
# keep the 300 steps CPU-cheap (about 15 s of compute after a ~13 s compile).
SPEECH_DS2 = DeepSpeech2(conv_features=(4, 4, 4), conv_kernels=((3, 3),) * 3,
                         conv_strides=((2, 2), (2, 1), (1, 1)), rnn_features=32,
                         num_rnn_layers=1, dropout_rate=0.0)


@functools.cache
def tiny_speech_corpus() -> Any:
    return load_synthetic_an4(n_train=60, n_test=20, n_validation=10)


def _speech_arrays(split: Any) -> tuple[np.ndarray, ...]:
    return (split.features, split.feature_paddings(), split.labels, split.label_paddings())


@pytest.mark.slow  # ~45 s; in `make test-all` (the suite is at CI's 15 min edge)
def test_ds2_ctc_loss_falls_on_the_synthetic_speech_corpus():
    """300 Adam steps (batch 8) on the eSpeak corpus: the training CTC loss halves, the held-out
    loss falls, and greedy decoding has left the all-blank plateau (CER < 90%; the plateau,
    where the loss first settles, decodes to nothing: CER 100%)."""
    corpus = tiny_speech_corpus()
    case = Case(SPEECH_DS2, "conv1", lambda: _speech_arrays(corpus.train), speech_loss, 300, 8,
                1e-2)
    variables = case.variables()
    masks = gpjax.init_masks(variables, density=1.0)
    tx = _tx(case.lr)
    held_out = _speech_arrays(corpus.test)
    frozen = jax.jit(lambda v, batch: speech_loss(case.model, v, batch, False, None)[0])
    before = float(frozen(variables, held_out))
    state, losses = _run(make_step(case, tx), (variables, tx.init(variables), masks),
                         case.batches(case.steps), key=0)
    assert np.all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-20:])
    assert last < 0.5 * first, (first, last)
    after = float(frozen(state[0], held_out))
    assert after < 0.75 * before, (before, after)
    split = corpus.train
    logits, out_pads = jax.jit(case.model.apply)(state[0], split.features,
                                                 split.feature_paddings())
    hyps = [decode_ids(h) for h in greedy_ctc_decode(logits, out_pads)]
    error = gpjax.metrics.cer(split.transcripts, hyps)
    assert error < 0.9, (error, hyps[:3], split.transcripts[:3])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(list(CASES)), seed=st.integers(0, 2**16),
       percentiles=st.lists(st.floats(50.0, 99.5), min_size=1, max_size=3))
def test_hard_recoverable_pruning_keeps_every_unit_connected(name, seed, percentiles):
    """Prune hard (up to 99.5% per round, repeatedly) with recoverable=True: no unit of any
    kernel loses all its inputs or outputs, except the input rows of input-fed kernels."""
    case = CASES[name]
    variables = case.variables()
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), variables)
    masks = gpjax.init_masks(variables)
    for pct in percentiles:
        variables, masks = gpjax.prune(variables, masks, percentile=pct,
                                       input_fed=case.model.input_kernels)
    count = gpjax.count_params(masks)
    assert count.active < (1 - 0.4 * percentiles[0] / 100) * count.dense
    dead = gpjax.dead_units(masks, input_fed=case.model.input_kernels)
    assert all(d == (0, 0) for d in dead.values()), {k: d for k, d in dead.items() if any(d)}
