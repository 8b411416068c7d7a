"""Speech-recognition metrics: greedy CTC decoding, word and character error rates.

* :func:`greedy_ctc_decode`: best-path CTC decoding (argmax per frame, collapse repeats, drop
  blanks). The argmax runs jitted; the ragged part (lengths differ per utterance) in numpy.
* :func:`edit_distance`: Levenshtein distance between two sequences (unit costs).
* :func:`wer`, :func:`cer`: corpus-level error rates, the total number of edits (substitutions,
  deletions, insertions) over all utterances divided by the total reference length (words or
  characters). They are not means of per-utterance rates, so long utterances weigh more, as in
  the usual ASR scoring (NIST sclite, jiwer).

Text normalisation is minimal and the same for both rates: leading/trailing whitespace is
stripped and runs of whitespace collapse to one space. Words are the whitespace-separated tokens;
characters are those of the normalised string, spaces included. Case is kept (compare like with
like: :func:`gpjax.data.speech.decode_ids` gives lower case, and the transcripts of
:class:`gpjax.data.speech.SpeechSplit` are lower case too).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cer", "edit_distance", "greedy_ctc_decode", "masked_edit_distance", "wer"]


@jax.jit
def _best_path(logits: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def greedy_ctc_decode(logits: jax.Array | np.ndarray, logit_paddings: jax.Array | np.ndarray,
                      blank_id: int = 0) -> list[list[int]]:
    """Greedy (best-path) CTC decoding.

    For each utterance: the arg-max label of every real (unpadded) frame, then runs of the same
    label collapse to one, then blanks are dropped (so ``a a _ a`` gives ``a a``).

    Args:
      logits: ``[B, T, V]`` per-frame scores (logits or log-probabilities).
      logit_paddings: ``[B, T]``, 1.0 at padded frames and 0.0 at real ones (optax's
        convention). Padded frames are skipped wherever they are.
      blank_id: the CTC blank's label id.

    Returns:
      ``B`` lists of label ids (Python ints), blanks removed.

    Raises:
      ValueError: the shapes do not fit together.
    """
    logits_shape = tuple(np.shape(logits))
    pad_shape = tuple(np.shape(logit_paddings))
    if len(logits_shape) != 3 or pad_shape != logits_shape[:2]:
        raise ValueError(
            f"greedy_ctc_decode wants logits [B, T, V] and logit_paddings [B, T]; got "
            f"{logits_shape} and {pad_shape}. Fix: add a batch axis to single utterances and "
            "pass the paddings the model returned with its logits.")
    if not 0 <= blank_id < logits_shape[2]:
        raise ValueError(f"blank_id={blank_id} is not a label id of a {logits_shape[2]}-way "
                         "output. Fix: pass the model's blank id.")
    best = np.asarray(_best_path(jnp.asarray(logits)))
    real = np.asarray(logit_paddings) < 0.5
    out = []
    for path, keep_frames in zip(best, real, strict=True):
        path = path[keep_frames]
        if path.size == 0:
            out.append([])
            continue
        keep = np.ones(path.shape, bool)
        keep[1:] = path[1:] != path[:-1]
        keep &= path != blank_id
        out.append([int(c) for c in path[keep]])
    return out


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """Levenshtein distance: the fewest substitutions, deletions and insertions (each costing 1)
    that turn ``reference`` into ``hypothesis``.

    Args:
      reference: a sequence (a string, or a list of words or ids).
      hypothesis: a sequence of the same kind.

    Returns:
      The distance, an int in ``[|len(ref) - len(hyp)|, max(len(ref), len(hyp))]``.
    """
    ref, hyp = list(reference), list(hypothesis)
    if len(ref) < len(hyp):  # the row is the shorter one: O(min) memory
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1,  # delete r
                               current[j - 1] + 1,  # insert h
                               previous[j - 1] + (r != h)))  # substitute (or match)
        previous = current
    return previous[-1]


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str], name: str) -> None:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError(f"{name} wants lists of strings, one per utterance, not a bare string. "
                         f"Fix: call {name}([reference], [hypothesis]).")
    if len(references) != len(hypotheses):
        raise ValueError(f"{name}: {len(references)} references but {len(hypotheses)} "
                         "hypotheses. Fix: pass one hypothesis per reference, in the same order.")


def _error_rate(pairs: list[tuple[Sequence[str], Sequence[str]]], name: str, unit: str) -> float:
    edits = sum(edit_distance(r, h) for r, h in pairs)
    total = sum(len(r) for r, _ in pairs)
    if total == 0:
        raise ValueError(f"{name} is undefined: the references hold no {unit} at all (the "
                         f"denominator is the total number of reference {unit}). Fix: score "
                         "non-empty references.")
    return edits / total


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate: total word edits / total reference words.

    Args:
      references: ``N`` reference transcripts.
      hypotheses: ``N`` recognised transcripts, in the same order.

    Returns:
      ``sum_i lev(ref_i words, hyp_i words) / sum_i |ref_i words|`` (may exceed 1.0 when the
      hypotheses insert many words).

    Raises:
      ValueError: the lists differ in length, or the references hold no words.
      TypeError: bare strings instead of lists.
    """
    _check_pairs(references, hypotheses, "wer")
    pairs = [(_normalise(r).split(), _normalise(h).split())
             for r, h in zip(references, hypotheses, strict=True)]
    return _error_rate(pairs, "wer", "words")


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate: total character edits / total reference characters.

    Characters are those of the whitespace-normalised strings, single spaces between words
    included.

    Args:
      references: ``N`` reference transcripts.
      hypotheses: ``N`` recognised transcripts, in the same order.

    Returns:
      ``sum_i lev(ref_i, hyp_i) / sum_i |ref_i|`` over characters.

    Raises:
      ValueError: the lists differ in length, or the references hold no characters.
      TypeError: bare strings instead of lists.
    """
    _check_pairs(references, hypotheses, "cer")
    pairs = [(_normalise(r), _normalise(h)) for r, h in zip(references, hypotheses, strict=True)]
    return _error_rate(pairs, "cer", "characters")


def masked_edit_distance(hyp: jax.Array, hyp_valid: jax.Array, ref: jax.Array,
                         ref_len: jax.Array) -> jax.Array:
    """Edit distance between the valid entries of ``hyp [T]`` and ``ref[:ref_len]`` (jittable).

    Rows of the DP table are computed per hypothesis symbol (skipped where not valid); the
    in-row insertion chain is a cumulative minimum: ``row[j] = min_k (tmp[k] + j - k)``.
    """
    L = ref.shape[0]
    j = jnp.arange(L + 1, dtype=jnp.float32)
    row0 = j

    def step(prev, inp):
        i, sym, ok = inp
        cost = (ref != sym).astype(jnp.float32)
        tmp = jnp.concatenate([prev[:1] + 1, jnp.minimum(prev[1:] + 1, prev[:-1] + cost)])
        row = jax.lax.cummin(tmp - j) + j
        return jnp.where(ok, row, prev), None

    last, _ = jax.lax.scan(step, row0, (jnp.arange(hyp.shape[0]), hyp, hyp_valid))
    return jnp.take(last, ref_len)
