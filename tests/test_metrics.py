"""Tests of gpjax.metrics: greedy CTC decoding, edit distance, WER and CER."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpjax.metrics import cer, edit_distance, greedy_ctc_decode, wer


def _one_hot_logits(paths: list[list[int]], vocab: int, frames: int) -> np.ndarray:
    logits = np.full((len(paths), frames, vocab), -5.0, np.float32)
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            logits[b, t, c] = 5.0
    return logits


# ---------------------------------------------------------------- greedy CTC decoding


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    # a a _ a b b _ _ c  ->  a a b c   (the blank separates the two a's)
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    logits = _one_hot_logits([path], vocab=4, frames=len(path))
    paddings = np.zeros((1, len(path)), np.float32)
    assert greedy_ctc_decode(logits, paddings) == [[1, 1, 2, 3]]


def test_greedy_decode_ignores_padded_frames():
    paths = [[1, 2, 2, 0], [3, 3, 3, 3]]
    logits = _one_hot_logits(paths, vocab=4, frames=6)
    logits[:, 4:, 1] = 50.0  # padded frames would add a "1" if they were read
    paddings = np.array([[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]], np.float32)
    assert greedy_ctc_decode(logits, paddings) == [[1, 2], [3]]


def test_greedy_decode_fully_padded_and_all_blank():
    logits = _one_hot_logits([[0, 0, 0], [1, 1, 1]], vocab=3, frames=3)
    paddings = np.array([[0, 0, 0], [1, 1, 1]], np.float32)
    assert greedy_ctc_decode(logits, paddings) == [[], []]


def test_greedy_decode_other_blank_id_and_jax_input():
    import jax.numpy as jnp

    path = [2, 0, 0, 2, 1, 2]  # blank is 2 here
    logits = jnp.asarray(_one_hot_logits([path], vocab=3, frames=6))
    out = greedy_ctc_decode(logits, jnp.zeros((1, 6)), blank_id=2)
    assert out == [[0, 1]]
    assert all(type(c) is int for c in out[0])


def test_greedy_decode_bad_shapes():
    with pytest.raises(ValueError, match=r"logits \[B, T, V\]"):
        greedy_ctc_decode(np.zeros((3, 4)), np.zeros((3,)))
    with pytest.raises(ValueError, match="logit_paddings"):
        greedy_ctc_decode(np.zeros((2, 5, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="blank_id"):
        greedy_ctc_decode(np.zeros((2, 5, 4)), np.zeros((2, 5)), blank_id=4)


# ---------------------------------------------------------------- WER / CER, hand-made


def test_wer_substitution():
    assert wer(["a b c"], ["a x c"]) == pytest.approx(1 / 3)


def test_wer_insertion_and_deletion():
    assert wer(["a b c"], ["a b c d"]) == pytest.approx(1 / 3)  # one insertion
    assert wer(["a b c"], ["a c"]) == pytest.approx(1 / 3)  # one deletion
    assert wer(["a b"], ["x y z w"]) == pytest.approx(4 / 2)  # 2 subs + 2 ins: above 1


def test_wer_empty_hypothesis_and_perfect():
    assert wer(["one two three four"], [""]) == 1.0
    assert wer(["yes", "enter five"], ["yes", "enter five"]) == 0.0


def test_wer_is_corpus_level_not_a_mean():
    # 1 error in 1 word + 0 errors in 3 words = 1/4, whereas the mean of rates would be 1/2.
    assert wer(["yes", "one two three"], ["no", "one two three"]) == pytest.approx(1 / 4)


def test_wer_whitespace_normalised():
    assert wer(["  a   b c "], ["a b\tc"]) == 0.0


def test_cer_hand_made():
    assert cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert cer(["ab cd"], ["abcd"]) == pytest.approx(1 / 5)  # the space counts
    assert cer(["kitten"], ["sitting"]) == pytest.approx(3 / 6)
    assert cer(["abc", "de"], ["", "de"]) == pytest.approx(3 / 5)


def test_metrics_errors():
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no words"):
        wer([""], ["a"])
    with pytest.raises(ValueError, match="no characters"):
        cer(["  "], ["a"])
    with pytest.raises(TypeError, match="bare string"):
        cer("abc", "abd")


def test_edit_distance_hand_made():
    assert edit_distance("", "") == 0
    assert edit_distance("abc", "") == 3
    assert edit_distance("", "ab") == 2
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance(["a", "b"], ["b", "a"]) == 2


# ------------------------------------------------------- property: vs a recursive reference


def _reference_distance(a: tuple, b: tuple) -> int:
    """Levenshtein distance by the textbook recursion, memoised (independent of edit_distance)."""

    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0:
            return j
        if j == 0:
            return i
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


_words = st.lists(st.sampled_from(["a", "b", "c", "yes", "no"]), max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="abc ", max_size=7), st.text(alphabet="abc ", max_size=7))
def test_edit_distance_matches_recursive_reference(a, b):
    assert edit_distance(a, b) == _reference_distance(tuple(a), tuple(b))
    assert edit_distance(a, b) == edit_distance(b, a)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_words, _words), min_size=1, max_size=4))
def test_wer_cer_match_reference(pairs):
    refs = [" ".join(r) for r, _ in pairs]
    hyps = [" ".join(h) for _, h in pairs]
    n_words = sum(len(r) for r, _ in pairs)
    n_chars = sum(len(r) for r in refs)
    if n_words == 0:
        with pytest.raises(ValueError):
            wer(refs, hyps)
        return
    want_wer = sum(_reference_distance(tuple(r), tuple(h)) for r, h in pairs) / n_words
    want_cer = sum(_reference_distance(tuple(r), tuple(h)) for r, h in zip(refs, hyps)) / n_chars
    assert wer(refs, hyps) == pytest.approx(want_wer)
    assert cer(refs, hyps) == pytest.approx(want_cer)
