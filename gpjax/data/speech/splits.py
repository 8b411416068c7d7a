"""The dataset values of a speech corpus: padded splits, the dataset, batches for CTC.

Both loaders return a :class:`SpeechDataset` ``(train, validation, test, source)`` whose splits
are :class:`SpeechSplit` values::

    features        float32 [N, T_max, F]  MFCC frames (100 per second), zero after each end
    feature_lengths int32   [N]            real frames of each utterance
    labels          int32   [N, L_max]     character ids (see VOCAB), 0 after each end
    label_lengths   int32   [N]            real characters of each transcript
    transcripts     list[str]              the lower-case transcripts (what WER compares to)

Paddings in optax's convention (1.0 = padded) come from :meth:`SpeechSplit.feature_paddings` /
:meth:`SpeechSplit.label_paddings`, and :func:`iterate_batches` / :meth:`SpeechSplit.batch`
give :class:`SpeechBatch` values for ``optax.ctc_loss``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from gpjax.data.speech.ctc import lengths_to_paddings
from gpjax.data.speech.features import NUM_MFCC
from gpjax.data.speech.text import VOCAB_SIZE, encode_text, normalize_transcript

__all__ = ["SpeechBatch", "SpeechDataset", "SpeechSplit", "iterate_batches",
           "make_speech_split", "split_validation"]


class SpeechSplit(NamedTuple):
    """One split of a speech corpus, padded for a CTC model.

    Attributes:
      features: float32 ``[N, T_max, F]`` MFCC frames, zero beyond ``feature_lengths``.
      feature_lengths: int32 ``[N]``.
      labels: int32 ``[N, L_max]`` character ids (:data:`VOCAB`), 0 beyond ``label_lengths``.
      label_lengths: int32 ``[N]``.
      transcripts: ``N`` lower-case transcripts (``decode_ids(labels[i, :label_lengths[i]])``).
    """

    features: np.ndarray
    feature_lengths: np.ndarray
    labels: np.ndarray
    label_lengths: np.ndarray
    transcripts: list[str]

    def __len__(self) -> int:
        return len(self.feature_lengths)

    @property
    def num_features(self) -> int:
        """``F``, the MFCCs per frame."""
        return int(self.features.shape[-1])

    def feature_paddings(self) -> np.ndarray:
        """float32 ``[N, T_max]``: 1.0 at padded frames (optax's ``logit_paddings`` convention)."""
        return lengths_to_paddings(self.feature_lengths, self.features.shape[1])

    def label_paddings(self) -> np.ndarray:
        """float32 ``[N, L_max]``: 1.0 at padded label positions (``optax.ctc_loss``)."""
        return lengths_to_paddings(self.label_lengths, self.labels.shape[1])

    def take(self, indices: Sequence[int] | np.ndarray) -> SpeechSplit:
        """The utterances at ``indices``, with ``T_max`` and ``L_max`` unchanged.

        Args:
          indices: ``[M]`` ints (e.g. one of the ten parts of the incremental protocol).

        Returns:
          A :class:`SpeechSplit` of ``M`` utterances.
        """
        idx = np.asarray(indices, np.int64).reshape(-1)
        return SpeechSplit(self.features[idx], self.feature_lengths[idx], self.labels[idx],
                           self.label_lengths[idx], [self.transcripts[i] for i in idx])

    def batch(self, indices: Sequence[int] | np.ndarray, *,
              frame_multiple: int | None = None) -> SpeechBatch:
        """A :class:`SpeechBatch` of the utterances at ``indices``.

        Args:
          indices: ``[B]`` ints.
          frame_multiple: if given, frames are cut to the batch's longest utterance rounded up
            to a multiple of this (fewer distinct shapes than cutting exactly, so fewer
            recompilations); by default the split's ``T_max`` is kept (one shape).

        Returns:
          The batch.
        """
        idx = np.asarray(indices, np.int64).reshape(-1)
        frames = self.features.shape[1]
        if frame_multiple is not None and idx.size:
            longest = int(self.feature_lengths[idx].max())
            frames = min(frames, max(frame_multiple,
                                     -(-longest // frame_multiple) * frame_multiple))
        feats = self.features[idx, :frames]
        return SpeechBatch(
            features=feats,
            feature_paddings=lengths_to_paddings(self.feature_lengths[idx], frames),
            labels=self.labels[idx],
            label_paddings=lengths_to_paddings(self.label_lengths[idx], self.labels.shape[1]),
            indices=idx.astype(np.int32),
        )


class SpeechDataset(NamedTuple):
    """A speech corpus as the paper uses AN4: train, validation (held out of train), test.

    Attributes:
      train, validation, test: :class:`SpeechSplit`.
      source: where the data came from (``"an4:<dir>"``, ``"synthetic:..."``).
    """

    train: SpeechSplit
    validation: SpeechSplit
    test: SpeechSplit
    source: str

    @property
    def num_features(self) -> int:
        """``F``, the MFCCs per frame (the model's input width)."""
        return self.train.num_features

    @property
    def vocab_size(self) -> int:
        """Output symbols of a CTC model on this data, blank included (:data:`VOCAB_SIZE`)."""
        return VOCAB_SIZE


class SpeechBatch(NamedTuple):
    """A batch for ``optax.ctc_loss``.

    Attributes:
      features: float32 ``[B, T, F]``.
      feature_paddings: float32 ``[B, T]``, 1.0 = padded frame.
      labels: int32 ``[B, L]``.
      label_paddings: float32 ``[B, L]``, 1.0 = padded label position.
      indices: int32 ``[B]``, the utterances' positions in their split (for transcripts).
    """

    features: np.ndarray
    feature_paddings: np.ndarray
    labels: np.ndarray
    label_paddings: np.ndarray
    indices: np.ndarray


def make_speech_split(features: Sequence[np.ndarray], transcripts: Sequence[str]) -> SpeechSplit:
    """Pads per-utterance features and encodes transcripts into a :class:`SpeechSplit`.

    Args:
      features: ``N`` arrays ``[T_i, F]`` (same ``F``).
      transcripts: ``N`` transcripts (normalised with :func:`normalize_transcript`).

    Returns:
      The split; ``T_max`` / ``L_max`` are the longest ``T_i`` / transcript (at least 1).

    Raises:
      ValueError: mismatched counts or feature widths, or unencodable transcripts.
    """
    if len(features) != len(transcripts):
        raise ValueError(f"make_speech_split: {len(features)} feature arrays but "
                         f"{len(transcripts)} transcripts. Fix: pass one transcript per utterance.")
    widths = {np.shape(f)[-1] for f in features if np.ndim(f) == 2}
    if len(widths) > 1 or any(np.ndim(f) != 2 for f in features):
        raise ValueError(f"make_speech_split: features must all be [T_i, F] with one F; got "
                         f"widths {sorted(widths)}.")
    width = widths.pop() if widths else NUM_MFCC
    texts = [normalize_transcript(t) for t in transcripts]
    ids = [encode_text(t) for t in texts]
    n = len(features)
    f_len = np.array([len(f) for f in features], np.int32)
    l_len = np.array([len(i) for i in ids], np.int32)
    feats = np.zeros((n, max(1, int(f_len.max(initial=0))), width), np.float32)
    labels = np.zeros((n, max(1, int(l_len.max(initial=0)))), np.int32)
    for i, (f, lab) in enumerate(zip(features, ids, strict=True)):
        feats[i, : len(f)] = f
        labels[i, : len(lab)] = lab
    return SpeechSplit(feats, f_len, labels, l_len, texts)


def iterate_batches(split: SpeechSplit, batch_size: int, *, shuffle: bool = False,
                    seed: int = 0, drop_remainder: bool = False,
                    frame_multiple: int | None = None) -> Iterator[SpeechBatch]:
    """One epoch of batches over a split.

    Args:
      split: the data.
      batch_size: ``B``.
      shuffle: visit utterances in a seeded random order (else in order).
      seed: the order's seed (e.g. the epoch number).
      drop_remainder: drop the last, smaller batch (so every batch has one shape).
      frame_multiple: see :meth:`SpeechSplit.batch`.

    Yields:
      :class:`SpeechBatch` values of ``B`` utterances (the last may be smaller).
    """
    if batch_size <= 0:
        raise ValueError(f"iterate_batches: batch_size must be positive, got {batch_size}.")
    order = (np.random.default_rng(seed).permutation(len(split)) if shuffle
             else np.arange(len(split)))
    stop = len(order) - (len(order) % batch_size if drop_remainder else 0)
    for start in range(0, stop, batch_size):
        yield split.batch(order[start:start + batch_size], frame_multiple=frame_multiple)


def split_validation(split: SpeechSplit, n_validation: int, seed: int,
                     what: str) -> tuple[SpeechSplit, SpeechSplit]:
    """Holds ``n_validation`` utterances (a seeded random choice) out of ``split``.

    Args:
      split: the training utterances.
      n_validation: how many to hold out.
      seed: the choice's seed.
      what: the caller's name, for the error message.

    Returns:
      ``(train, validation)``, each in the original order.

    Raises:
      ValueError: ``n_validation`` outside ``0..len(split) - 1``.
    """
    if not 0 <= n_validation < len(split):
        raise ValueError(f"{what}: n_validation={n_validation} must be in 0..{len(split) - 1} "
                         f"(train has {len(split)} utterances). Fix: hold out fewer utterances.")
    perm = np.random.default_rng(seed).permutation(len(split))
    val, train = np.sort(perm[:n_validation]), np.sort(perm[n_validation:])
    return split.take(train), split.take(val)
