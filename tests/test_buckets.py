"""Length-bucketed speech splits in the Trainer: an epoch has the steps of every bucket, and
evaluation and growth gradients over the buckets equal those over the padded split
(DeepSpeech2 ignores padded frames). Training on buckets inside a run:
``tests/test_incremental.py::test_speech_rows_report_wer_and_cer``."""

from __future__ import annotations

import math

import chex
import hypothesis.strategies as st
import jax
import numpy as np
from hypothesis import given, settings

from gpjax.data.buckets import Bucketed, length_buckets
from gpjax.data.speech import make_speech_split
from gpjax.incremental.phases import Trainer, new_state
from gpjax.models import DeepSpeech2
from gpjax.tasks import speech_task
from gpjax.train import OptimizerConfig, make_optimizer


def _split(n=12, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(12, 64, n)
    words = ["a", "bc", "hello", "no", "yes"]
    split = make_speech_split([rng.standard_normal((t, 13)).astype(np.float32) for t in lengths],
                              [words[i % len(words)] for i in range(n)])
    return (split.features, split.feature_paddings(), split.labels, split.label_paddings())


def test_trainer_on_buckets_matches_the_padded_split():
    model = DeepSpeech2(rnn_features=8, conv_features=(4, 4, 4), num_rnn_layers=1,
                        dropout_rate=0.0)
    trainer = Trainer(speech_task(model), make_optimizer(OptimizerConfig(name="adam")),
                      batch_size=3, eval_batch_size=3, progress=False)
    data = _split()
    bucketed = length_buckets(data, 2, batch_size=3, multiple=8)
    assert isinstance(bucketed, Bucketed) and len(bucketed.parts) == 2
    assert max(p[0].shape[1] for p in bucketed.parts[:1]) < data[0].shape[1]
    state = new_state(trainer, jax.random.PRNGKey(0), tuple(a[:2] for a in data))

    assert trainer.steps(bucketed) == trainer.steps(data) == 4
    assert math.isclose(trainer.error(state, bucketed), trainer.error(state, data), abs_tol=1e-6)
    chex.assert_trees_all_close(trainer.gradients(state, bucketed),
                                trainer.gradients(state, data), atol=1e-5, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), multiple=st.sampled_from([1, 8, 16]),
       ratio=st.sampled_from([1.0, 1.125, 1.5]))
def test_grid_length_is_the_next_grid_multiple(n, multiple, ratio):
    """A grid length is a multiple at or above ``n``, at most one grid step above it, and the
    same for every ``n`` up to it (so different splits share their buckets' lengths)."""
    from gpjax.data.buckets import grid_length

    g = grid_length(n, multiple, ratio)
    assert g >= n and g % multiple == 0
    assert g < n * ratio + multiple
    assert grid_length(g, multiple, ratio) == g  # every length up to g shares it
    if ratio == 1.0:
        assert g == -(-n // multiple) * multiple
