"""Speech data for DeepSpeech2-H-LSTM: AN4 as CMU distributes it, an offline AN4-like corpus
synthesised with eSpeak NG, MFCC features, and a character vocabulary for CTC.

The dataset value
-----------------
Both loaders, :func:`load_an4` and :func:`load_synthetic_an4`, return a :class:`SpeechDataset`
``(train, validation, test, source)`` whose splits are :class:`SpeechSplit` values ready for a
CTC model::

    features        float32 [N, T_max, F]  MFCC frames (100 per second), zero after each end
    feature_lengths int32   [N]            real frames of each utterance
    labels          int32   [N, L_max]     character ids (see VOCAB), 0 after each end
    label_lengths   int32   [N]            real characters of each transcript
    transcripts     list[str]              the lower-case transcripts (what WER compares to)

``F`` is ``n_mfcc`` (26 by default). Paddings in optax's convention (1.0 = padded) come from
:meth:`SpeechSplit.feature_paddings` / :meth:`SpeechSplit.label_paddings`, and
:func:`iterate_batches` / :meth:`SpeechSplit.batch` give :class:`SpeechBatch` values
``(features, feature_paddings, labels, label_paddings, indices)`` for ``optax.ctc_loss``::

    for batch in iterate_batches(data.train, 32, shuffle=True, seed=epoch):
        logits, logit_paddings = model.apply(params, batch.features, batch.feature_paddings)
        loss = optax.ctc_loss(logits, logit_paddings, batch.labels, batch.label_paddings)

Vocabulary: id 0 is the CTC blank, then space, apostrophe and ``a``-``z`` (:data:`VOCAB`, 29
symbols). AN4 spells digits as words ("ONE TWO"), so letters suffice; :func:`encode_text`
lower-cases and rejects anything else. :func:`decode_ids` maps ids back (blanks dropped), and
:func:`gpjax.metrics.wer` compares the result with ``split.transcripts``.

Features: :func:`mfcc` (numpy): pre-emphasis, 25 ms Hamming frames every 10 ms, power spectrum
of a 512-point FFT, HTK-mel triangular filterbank (40 filters), natural log, orthonormal
DCT-II, and per-utterance mean/variance normalisation of each coefficient (on by default in the
loaders, which use :func:`mfcc_batch`, the same computation over many utterances at once).

AN4 (the real path)
-------------------
:func:`load_an4` reads the directory tree of CMU's ``an4_raw.bigendian.tar.gz`` (headerless
big-endian 16-bit 16 kHz PCM ``.raw``), ``an4_raw.littleendian.tar.gz`` (``byte_order=
"little"``) or ``an4_sphere.tar.gz`` (NIST SPHERE ``.sph``; converted ``.wav`` also work)::

    an4/etc/an4_train.transcription    "<s> YES </s> (an251-fash-b)"   948 lines
    an4/etc/an4_test.transcription     "GO (an409-fcaw-b)"             130 lines
    an4/wav/an4_clstk/<speaker>/<utterance>.raw|.sph                   training speakers
    an4/wav/an4test_clstk/<speaker>/<utterance>.raw|.sph               test speakers

Train is 948 utterances of which ``n_validation=100`` (a seeded random choice) are held out as
validation; test is 130 utterances.

Synthetic AN4 (offline, runs anywhere with PyPI)
------------------------------------------------
:func:`load_synthetic_an4` makes AN4-like utterances (command words YES/NO/GO/STOP/HELP/REPEAT/
START, ENTER/ERASE/RUBOUT with spelled letters and numbers, spelled random letter strings,
digit strings, numbers, dates) and speaks them with eSpeak NG from the PyPI wheel
``espeakng-loader`` (its ``libespeak-ng.so`` and voice data), driven through ctypes:
``espeak_Initialize`` with ``AUDIO_OUTPUT_SYNCHRONOUS`` and a synth callback collecting 22,050
Hz int16 samples. Each utterance draws its accent (8 English voices), voice variant (20
male/female/Klatt variants), speaking rate, pitch, pitch range and word gap; the audio is then
speed-perturbed (+-7%) while resampled to 16 kHz (FFT, :func:`resample`), filtered by a random
first-order channel, padded with 0.05-0.35 s of silence, set to a random level, and mixed with
white/pink/brown noise at a random SNR (10-30 dB by default).

Determinism: eSpeak NG keeps internal state between utterances, so in one process the same
call does not give the same samples twice (they differ from about the 64th sample on, even with
its random seed and libc's ``srand`` reset; a fresh process replaying the same calls does
repeat them). Each utterance is therefore
synthesised in a freshly forked copy of a worker process that has only initialised the library
(no other synthesis), with eSpeak's random seed set per utterance; every utterance is a pure
function of its parameters, which are a pure function of ``(seed, split, index)``. The same
seed gives identical arrays whatever the number of workers. The audio (int16, 16 kHz) is
cached in ``<cache_dir>/synthetic_an4-<hash>.npz`` (default cache dir
``gpjax.data.mnist.data_dir() / "speech"``), written to a temporary file and renamed, keyed by
every generation option and the ``espeakng-loader`` version; MFCCs are recomputed on load.

Linux (or any POSIX system with ``fork``) is needed for the synthesis, not for reading a cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import os
import struct
import subprocess
import sys
import tempfile
import wave
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gpjax.data.mnist import DataUnavailableError, data_dir

__all__ = [
    "BLANK_ID",
    "NUM_MFCC",
    "SAMPLE_RATE",
    "VOCAB",
    "VOCAB_SIZE",
    "SpeechBatch",
    "SpeechDataset",
    "SpeechSplit",
    "decode_ids",
    "encode_text",
    "espeak_synthesize",
    "hz_to_mel",
    "iterate_batches",
    "lengths_to_paddings",
    "load_an4",
    "load_synthetic_an4",
    "make_speech_split",
    "mel_filterbank",
    "mel_to_hz",
    "mfcc",
    "mfcc_batch",
    "normalize_transcript",
    "read_an4_transcription",
    "read_audio",
    "read_raw_pcm",
    "read_sphere",
    "resample",
    "synthetic_transcripts",
]

# ============================================================================ vocabulary

BLANK_ID = 0
VOCAB: tuple[str, ...] = ("<blank>", " ", "'", *"abcdefghijklmnopqrstuvwxyz")
"""Output symbols of a CTC model: id 0 the blank, 1 space, 2 apostrophe, 3..28 ``a``-``z``."""
VOCAB_SIZE = len(VOCAB)
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB) if i != BLANK_ID}

SAMPLE_RATE = 16_000
"""Sample rate of the audio both loaders produce (AN4's)."""
NUM_MFCC = 26
"""MFCC coefficients per frame in the loaders' features (``F``)."""


def normalize_transcript(text: str) -> str:
    """Lower case, ``<s>``/``</s>`` markers removed, runs of whitespace collapsed to one space.

    Args:
      text: a transcript such as ``"<s> ENTER SIX </s>"``.

    Returns:
      e.g. ``"enter six"``.
    """
    words = [w for w in text.split() if w.lower() not in ("<s>", "</s>", "<sil>")]
    return " ".join(words).lower()


def encode_text(text: str) -> np.ndarray:
    """Character ids of a transcript (normalised first with :func:`normalize_transcript`).

    Args:
      text: letters, spaces and apostrophes, any case.

    Returns:
      int32 ``[len(normalised text)]`` ids in ``1..VOCAB_SIZE-1`` (never the blank).

    Raises:
      ValueError: a character outside :data:`VOCAB` (a digit, punctuation...).
    """
    norm = normalize_transcript(text)
    bad = sorted({c for c in norm if c not in _CHAR_TO_ID})
    if bad:
        raise ValueError(
            f"encode_text: {bad} in {text!r} are not in the vocabulary (blank, space, "
            "apostrophe, a-z). Fix: spell digits as words ('ONE TWO', as AN4 does) and drop "
            "punctuation before encoding.")
    return np.array([_CHAR_TO_ID[c] for c in norm], np.int32)


def decode_ids(ids: Sequence[int] | np.ndarray) -> str:
    """Text of character ids; blanks (id 0, also the label padding value) are dropped.

    Args:
      ids: ``[L]`` ids, e.g. one list from :func:`gpjax.metrics.greedy_ctc_decode`.

    Returns:
      The string (not whitespace-normalised: a model may emit double spaces; the metrics
      normalise).

    Raises:
      ValueError: an id outside ``0..VOCAB_SIZE-1``.
    """
    out = []
    for i in np.asarray(ids, np.int64).reshape(-1):
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"decode_ids: id {int(i)} is outside the vocabulary "
                             f"0..{VOCAB_SIZE - 1}. "
                             "Fix: decode outputs of a model built with vocab_size=VOCAB_SIZE.")
        if i != BLANK_ID:
            out.append(VOCAB[i])
    return "".join(out)


# ============================================================================ MFCC


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Triangular mel filters on the bins of an ``n_fft``-point real FFT.

    Filter ``m`` has corners at ``f[m-1], f[m], f[m+1]``, ``n_mels + 2`` frequencies equally
    spaced in mel from ``f_min`` to ``f_max``; its weight at bin ``k`` (frequency
    ``k * sample_rate / n_fft``) rises linearly from 0 at ``f[m-1]`` to 1 at ``f[m]`` and falls
    to 0 at ``f[m+1]`` (unnormalised, as in HTK).

    Args:
      n_mels: number of filters.
      n_fft: FFT size.
      sample_rate: Hz.
      f_min: lowest corner, Hz.
      f_max: highest corner, Hz (default ``sample_rate / 2``).

    Returns:
      float64 ``[n_fft // 2 + 1, n_mels]``.

    Raises:
      ValueError: bad frequencies, or a filter narrower than the bin spacing covers no bin.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel_filterbank: need 0 <= f_min < f_max <= sample_rate/2, got "
                         f"f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}.")
    corners = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, mid, hi = corners[:-2], corners[1:-1], corners[2:]
    f = freqs[:, None]
    rising = (f - lo) / (mid - lo)
    falling = (hi - f) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    empty = np.flatnonzero(weights.max(axis=0) <= 0)
    if empty.size:
        raise ValueError(
            f"mel_filterbank: filters {empty.tolist()} of {n_mels} cover no FFT bin (bins are "
            f"{sample_rate / n_fft:.1f} Hz apart). Fix: lower n_mels or raise n_fft.")
    return weights


def mfcc(signal: np.ndarray, sample_rate: int, *, n_mfcc: int = 13, frame_ms: float = 25.0,
         hop_ms: float = 10.0, n_fft: int = 512, n_mels: int = 40, f_min: float = 20.0,
         f_max: float | None = None, pre_emphasis: float = 0.97, log_floor: float = 1e-10,
         normalize: bool = False) -> np.ndarray:
    """Mel-frequency cepstral coefficients of the power spectrum.

    Steps (the textbook recipe):

    1. integer PCM is scaled to [-1, 1) (divided by ``2**(bits-1)``);
    2. pre-emphasis ``y[n] = x[n] - pre_emphasis * x[n-1]`` (``y[0] = x[0]``);
    3. frames of ``L = round(sample_rate * frame_ms / 1000)`` samples every
       ``H = round(sample_rate * hop_ms / 1000)``: ``T = 1 + (len - L) // H`` frames (a signal
       shorter than one frame is zero-padded to one frame; the tail past the last frame is
       dropped);
    4. each frame times a symmetric Hamming window ``0.54 - 0.46 cos(2 pi n / (L - 1))``;
    5. power spectrum ``|DFT_n_fft(frame)|^2 / n_fft`` on bins ``0..n_fft/2``;
    6. mel filterbank energies (:func:`mel_filterbank`), ``log(max(E, log_floor))``;
    7. orthonormal DCT-II over the ``n_mels`` log energies, the first ``n_mfcc`` kept;
    8. optionally (``normalize``) each coefficient shifted and scaled to zero mean and unit
       variance over the utterance's frames (per-utterance CMVN).

    Args:
      signal: ``[S]`` mono samples, float or integer PCM.
      sample_rate: Hz.
      n_mfcc: coefficients kept (``<= n_mels``).
      frame_ms: frame length in ms (needs ``L <= n_fft``).
      hop_ms: frame shift in ms.
      n_fft: FFT size.
      n_mels: mel filters.
      f_min: lowest filter corner, Hz.
      f_max: highest filter corner, Hz (default Nyquist).
      pre_emphasis: coefficient, 0 to disable.
      log_floor: energies are clipped below at this before the log.
      normalize: per-utterance mean/variance normalisation.

    Returns:
      float32 ``[T, n_mfcc]``.

    Raises:
      ValueError: a multi-channel or empty signal, or inconsistent sizes.
    """
    return mfcc_batch([signal], sample_rate, n_mfcc=n_mfcc, frame_ms=frame_ms, hop_ms=hop_ms,
                      n_fft=n_fft, n_mels=n_mels, f_min=f_min, f_max=f_max,
                      pre_emphasis=pre_emphasis, log_floor=log_floor, normalize=normalize)[0]


def mfcc_batch(signals: Sequence[np.ndarray], sample_rate: int, *, n_mfcc: int = 13,
               frame_ms: float = 25.0, hop_ms: float = 10.0, n_fft: int = 512,
               n_mels: int = 40, f_min: float = 20.0, f_max: float | None = None,
               pre_emphasis: float = 0.97, log_floor: float = 1e-10,
               normalize: bool = False) -> list[np.ndarray]:
    """:func:`mfcc` of many signals at once (same arguments, same results).

    The filterbank and DCT products run over the frames of many utterances together: one large
    matrix product instead of many small ones (much faster with a multi-threaded BLAS on a busy
    machine).

    Args:
      signals: ``N`` mono signals ``[S_i]``.
      sample_rate: Hz.
      n_mfcc, frame_ms, hop_ms, n_fft, n_mels, f_min, f_max, pre_emphasis, log_floor,
        normalize: as in :func:`mfcc`.

    Returns:
      ``N`` float32 arrays ``[T_i, n_mfcc]``.
    """
    frame_len = round(sample_rate * frame_ms / 1000.0)
    hop = round(sample_rate * hop_ms / 1000.0)
    if not 0 < frame_len <= n_fft or hop <= 0:
        raise ValueError(f"mfcc: a {frame_ms} ms frame at {sample_rate} Hz is {frame_len} "
                         f"samples, hop {hop}; need 0 < frame <= n_fft={n_fft} and hop > 0. "
                         "Fix: raise n_fft or shorten frame_ms.")
    if not 0 < n_mfcc <= n_mels:
        raise ValueError(f"mfcc: n_mfcc={n_mfcc} must be in 1..n_mels={n_mels}.")
    filters = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max)
    dct = _dct_matrix(n_mels, n_mfcc)
    window = np.hamming(frame_len)
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if not pending:
            return
        power = np.concatenate(pending)
        feats = np.log(np.maximum(power @ filters, log_floor)) @ dct
        start = 0
        for p in pending:
            f = feats[start:start + len(p)]
            start += len(p)
            if normalize:
                f = (f - f.mean(axis=0)) / (f.std(axis=0) + 1e-5)
            out.append(f.astype(np.float32))
        pending.clear()

    queued = 0
    for signal in signals:
        x = np.asarray(signal)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"mfcc wants a non-empty mono signal [S], got shape {x.shape}. "
                             "Fix: pass one channel (e.g. signal[:, 0]).")
        if np.issubdtype(x.dtype, np.integer):
            x = x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
        else:
            x = x.astype(np.float64)
        if pre_emphasis:
            x = np.concatenate([x[:1], x[1:] - pre_emphasis * x[:-1]])
        if x.size < frame_len:
            x = np.pad(x, (0, frame_len - x.size))
        frames = np.lib.stride_tricks.sliding_window_view(x, frame_len)[::hop] * window
        spec = np.fft.rfft(frames, n=n_fft, axis=1)
        pending.append((spec.real ** 2 + spec.imag ** 2) / n_fft)
        queued += len(frames)
        if queued >= 16384:
            flush()
            queued = 0
    flush()
    return out


def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II as an ``[n_in, n_out]`` matrix.

    ``c_k = s_k sum_n x_n cos(pi k (2n + 1) / (2 N))``, ``s_0 = sqrt(1/N)``, else ``sqrt(2/N)``.
    """
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    m[:, 0] /= np.sqrt(2.0)
    return m


# ============================================================================ dataset values


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


def lengths_to_paddings(lengths: Sequence[int] | np.ndarray, max_length: int) -> np.ndarray:
    """Paddings, 1.0 at positions ``>= length``.

    Args:
      lengths: ``[N]`` ints.
      max_length: ``T``.

    Returns:
      float32 ``[N, T]``.
    """
    lengths = np.asarray(lengths).reshape(-1, 1)
    return (np.arange(max_length)[None, :] >= lengths).astype(np.float32)


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


def _split_validation(split: SpeechSplit, n_validation: int, seed: int,
                      what: str) -> tuple[SpeechSplit, SpeechSplit]:
    if not 0 <= n_validation < len(split):
        raise ValueError(f"{what}: n_validation={n_validation} must be in 0..{len(split) - 1} "
                         f"(train has {len(split)} utterances).")
    perm = np.random.default_rng(seed).permutation(len(split))
    val, train = np.sort(perm[:n_validation]), np.sort(perm[n_validation:])
    return split.take(train), split.take(val)


def _features(audio: Sequence[np.ndarray], n_mfcc: int, normalize: bool) -> list[np.ndarray]:
    return mfcc_batch(audio, SAMPLE_RATE, n_mfcc=n_mfcc, normalize=normalize)


# ============================================================================ AN4 reader

AN4_TRAIN_DIR = "an4_clstk"
AN4_TEST_DIR = "an4test_clstk"
AN4_SIZES = {"train": 948, "test": 130}
"""Utterances in CMU's AN4 (before the validation hold-out)."""

_AUDIO_SUFFIXES = (".raw", ".sph", ".wav")


def read_an4_transcription(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Reads a CMU transcription file.

    Lines look like ``<s> ENTER SIX TWO FOUR </s> (an87-fbbh-b)`` (train) or
    ``ENTER SIX TWO FOUR (an87-fbbh-b)`` (test); blank lines are skipped.

    Args:
      path: e.g. ``an4/etc/an4_train.transcription``.

    Returns:
      ``(utterance_id, normalised transcript)`` pairs in file order.

    Raises:
      ValueError: the file is missing or a line lacks the ``(utterance-id)`` at its end.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"AN4 transcription file {path} does not exist. Fix: extract CMU's "
                         "an4_raw.bigendian.tar.gz (or an4_sphere.tar.gz) and pass the 'an4' "
                         "directory (the one holding etc/ and wav/) as root.")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        open_at = line.rfind("(")
        if open_at < 0 or not line.endswith(")") or " " in line[open_at:].strip():
            raise ValueError(f"{path}:{lineno}: {line!r} does not end with '(utterance-id)'. "
                             "Fix: pass an AN4 transcription file (lines like "
                             "'<s> YES </s> (an251-fash-b)').")
        utt = line[open_at + 1:-1].strip()
        out.append((utt, normalize_transcript(line[:open_at])))
    return out


def read_raw_pcm(path: str | os.PathLike, byte_order: str = "big") -> np.ndarray:
    """Reads headerless 16-bit PCM (AN4's ``.raw``).

    Args:
      path: the file.
      byte_order: ``"big"`` (``an4_raw.bigendian``) or ``"little"``.

    Returns:
      int16 ``[S]`` in native byte order.

    Raises:
      ValueError: an odd number of bytes (not 16-bit PCM), an unknown byte order, or samples
        that look byte-swapped (white noise in this byte order, smooth in the other).
    """
    if byte_order not in ("big", "little"):
        raise ValueError(f"byte_order must be 'big' or 'little', got {byte_order!r}.")
    data = Path(path).read_bytes()
    if len(data) % 2:
        raise ValueError(f"{path} has {len(data)} bytes, an odd number, so it is not 16-bit "
                         "PCM. Fix: pass AN4's .raw files (16-bit, 16 kHz, headerless) or the "
                         ".sph files of an4_sphere.")
    dtype = ">i2" if byte_order == "big" else "<i2"
    samples = np.frombuffer(data, dtype).astype(np.int16)
    _check_byte_order(samples, path, byte_order)
    return samples


def _lag1_correlation(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    x = x - x.mean()
    energy = float(np.dot(x, x))
    return float(np.dot(x[1:], x[:-1])) / energy if energy > 0 else 1.0


def _check_byte_order(samples: np.ndarray, path: object, byte_order: str) -> None:
    """Speech sampled at 16 kHz is smooth (neighbouring samples correlate strongly); read with
    the wrong byte order it turns into white noise."""
    if samples.size < 1000:
        return
    if _lag1_correlation(samples) < 0.2 and _lag1_correlation(samples.byteswap()) > 0.5:
        other = "little" if byte_order == "big" else "big"
        raise ValueError(f"{path} looks byte-swapped: read as {byte_order}-endian it is white "
                         f"noise, as {other}-endian a smooth signal. Fix: pass "
                         f"byte_order={other!r} (an4_raw.{other}endian), or check the files "
                         "are 16-bit PCM.")


def read_sphere(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads a NIST SPHERE file of uncompressed 16-bit mono PCM (AN4's ``.sph``).

    Args:
      path: the file.

    Returns:
      ``(int16 [S] samples, sample_rate)``.

    Raises:
      ValueError: not SPHERE, compressed (shorten, u-law), not 16-bit, or not mono.
    """
    data = Path(path).read_bytes()
    if not data.startswith(b"NIST_1A"):
        raise ValueError(f"{path} is not a NIST SPHERE file (no 'NIST_1A' header). Fix: pass "
                         ".sph files from an4_sphere.tar.gz, or .raw files with byte_order.")
    lines = data[:4096].split(b"\n")
    try:
        header_size = int(lines[1].strip())
    except (IndexError, ValueError):
        raise ValueError(f"{path}: malformed SPHERE header (no header size on line 2).") from None
    fields: dict[str, str] = {}
    for raw in data[:header_size].split(b"\n")[2:]:
        parts = raw.decode("latin-1").split(None, 2)
        if parts and parts[0] == "end_head":
            break
        if len(parts) == 3:
            fields[parts[0]] = parts[2].strip()
    coding = fields.get("sample_coding", "pcm").lower()
    n_bytes = int(fields.get("sample_n_bytes", "2"))
    channels = int(fields.get("channel_count", "1"))
    rate = int(fields.get("sample_rate", str(SAMPLE_RATE)))
    if coding != "pcm" or n_bytes != 2 or channels != 1:
        raise ValueError(
            f"{path}: SPHERE sample_coding={coding!r}, sample_n_bytes={n_bytes}, "
            f"channel_count={channels}; only uncompressed 16-bit mono PCM is read. Fix: convert "
            "it first (e.g. `sph2pipe -p -f raw in.sph out.raw`, then byte_order='little').")
    order = fields.get("sample_byte_format", "01")
    dtype = ">i2" if order == "10" else "<i2"
    body = data[header_size:]
    count = int(fields.get("sample_count", len(body) // 2))
    if len(body) < 2 * count:
        raise ValueError(f"{path}: header says {count} samples but only {len(body) // 2} follow "
                         "(truncated file). Fix: extract the archive again.")
    return np.frombuffer(body[: 2 * count], dtype).astype(np.int16), rate


def read_audio(path: str | os.PathLike, byte_order: str = "big") -> tuple[np.ndarray, int]:
    """Reads an AN4 audio file: ``.raw`` (16 kHz), ``.sph`` or 16-bit mono ``.wav``.

    Args:
      path: the file.
      byte_order: of ``.raw`` files.

    Returns:
      ``(int16 [S] samples, sample_rate)``.

    Raises:
      ValueError: an unknown suffix or sample format.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".raw":
        return read_raw_pcm(path, byte_order), SAMPLE_RATE
    if suffix == ".sph":
        return read_sphere(path)
    if suffix == ".wav":
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit, {w.getnchannels()} "
                                 "channel(s); only 16-bit mono WAV is read. Fix: convert it.")
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16), \
                w.getframerate()
    raise ValueError(f"{path}: unknown audio suffix {suffix!r}; expected one of "
                     f"{_AUDIO_SUFFIXES}.")


def resample(signal: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    """Band-limited resampling through the FFT (numpy only).

    The spectrum of the zero-padded signal is cut (or zero-extended) to the new length and
    transformed back: an ideal low-pass at the lower of the two Nyquist frequencies. The signal
    is padded with at least 5 ms of zeros on each side first, so the FFT's wrap-around does not
    mix its two ends; that padding is removed again. The rate ratio is taken as a fraction
    with denominator at most 2000 (exact for 22,050 -> 16,000 Hz: 320/441).

    Args:
      signal: ``[S]`` samples (any real dtype; computed in float64).
      rate_in: the signal's rate.
      rate_out: the wanted rate.

    Returns:
      float64 ``[round(S * rate_out / rate_in)]``.
    """
    x = np.asarray(signal, np.float64)
    if rate_in == rate_out or x.size == 0:
        return x.copy()
    ratio = Fraction(rate_out / rate_in).limit_denominator(2000)
    q = ratio.denominator
    pad = -(-round(0.005 * rate_in) // q) * q  # whole multiples of q: the output aligns
    # Pad the end so the ratio maps whole samples to whole samples (no drift over the signal).
    n_in = -(-(x.size + 2 * pad) // q) * q
    n_out = n_in * ratio.numerator // q
    spec = np.fft.rfft(np.pad(x, (pad, n_in - x.size - pad)))
    keep = min(spec.size, n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, complex)
    out_spec[:keep] = spec[:keep]
    if n_out < n_in and n_out % 2 == 0:  # the new Nyquist bin of a real signal is real
        out_spec[-1] = out_spec[-1].real
    y = np.fft.irfft(out_spec, n_out) * (n_out / n_in)
    start = pad * ratio.numerator // q
    return y[start:start + round(x.size * ratio)]


def _an4_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    for cand in (root, root / "an4"):
        if (cand / "etc").is_dir() and (cand / "wav").is_dir():
            return cand
    raise ValueError(f"{root} holds no AN4 corpus (no etc/ and wav/ in it or in {root / 'an4'}). "
                     "Fix: extract an4_raw.bigendian.tar.gz or an4_sphere.tar.gz from CMU "
                     "(http://www.speech.cs.cmu.edu/databases/an4/) and pass its directory.")


def _index_audio(directory: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    if directory.is_dir():
        for p in sorted(directory.rglob("*")):
            if p.suffix.lower() in _AUDIO_SUFFIXES and p.is_file():
                index.setdefault(p.stem, p)
    return index


def _read_an4_split(root: Path, split: str, byte_order: str) -> tuple[list[np.ndarray], list[str]]:
    pairs = read_an4_transcription(root / "etc" / f"an4_{split}.transcription")
    wav_dir = root / "wav" / (AN4_TRAIN_DIR if split == "train" else AN4_TEST_DIR)
    index: dict[str, Path] | None = None
    audio, texts = [], []
    for utt, text in pairs:
        speaker = utt.split("-")[1] if utt.count("-") >= 2 else ""
        path = next((p for s in _AUDIO_SUFFIXES
                     if (p := wav_dir / speaker / f"{utt}{s}").is_file()), None)
        if path is None:
            if index is None:
                index = _index_audio(root / "wav")
            path = index.get(utt)
        if path is None:
            raise ValueError(f"AN4 {split}: no audio for utterance {utt!r} (looked for "
                             f"{wav_dir / speaker / utt}.raw/.sph/.wav and anywhere under "
                             f"{root / 'wav'}). Fix: extract the whole archive; the "
                             "transcription and audio must come from the same release.")
        samples, rate = read_audio(path, byte_order)
        audio.append(samples if rate == SAMPLE_RATE else resample(samples, rate, SAMPLE_RATE))
        texts.append(text)
    return audio, texts


def load_an4(root: str | os.PathLike, *, n_validation: int = 100, seed: int = 0,
             n_mfcc: int = NUM_MFCC, normalize: bool = True,
             byte_order: str = "big") -> SpeechDataset:
    """Loads CMU's AN4 (948 train / 130 test utterances) with a validation hold-out.

    Args:
      root: the ``an4`` directory (holding ``etc/`` and ``wav/``) or its parent.
      n_validation: training utterances held out as validation (seeded random choice).
      seed: seed of that choice.
      n_mfcc: MFCCs per frame (``F``).
      normalize: per-utterance mean/variance normalisation of the MFCCs.
      byte_order: of the ``.raw`` files: ``"big"`` for ``an4_raw.bigendian``, ``"little"`` for
        ``an4_raw.littleendian`` (``.sph`` files carry their own).

    Returns:
      A :class:`SpeechDataset`; with the full corpus 848 train, 100 validation, 130 test.

    Raises:
      ValueError: a missing directory, transcription or audio file, or a bad sample format.
    """
    base = _an4_root(root)
    splits = {}
    for split in ("train", "test"):
        audio, texts = _read_an4_split(base, split, byte_order)
        splits[split] = make_speech_split(_features(audio, n_mfcc, normalize), texts)
    train, validation = _split_validation(splits["train"], n_validation, seed, "load_an4")
    return SpeechDataset(train, validation, splits["test"], source=f"an4:{base}")


# ============================================================================ synthetic AN4

ESPEAK_SPEC = "espeakng-loader>=0.2.4,<0.3"
SYNTHETIC_VERSION = 1
"""Bumped whenever the synthetic corpus generator changes (it is part of the cache key)."""
ESPEAK_RATE = 22_050

_COMMANDS = ("YES", "NO", "GO", "STOP", "HELP", "REPEAT", "START")
_ONES = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
_TEENS = ("TEN", "ELEVEN", "TWELVE", "THIRTEEN", "FOURTEEN", "FIFTEEN", "SIXTEEN",
          "SEVENTEEN", "EIGHTEEN", "NINETEEN")
_TENS = ("", "", "TWENTY", "THIRTY", "FORTY", "FIFTY", "SIXTY", "SEVENTY", "EIGHTY", "NINETY")
_MONTHS = ("JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST",
           "SEPTEMBER", "OCTOBER", "NOVEMBER", "DECEMBER")
_ORDINAL_ONES = ("", "FIRST", "SECOND", "THIRD", "FOURTH", "FIFTH", "SIXTH", "SEVENTH",
                 "EIGHTH", "NINTH")
_ORDINAL_TEENS = ("TENTH", "ELEVENTH", "TWELFTH", "THIRTEENTH", "FOURTEENTH", "FIFTEENTH",
                  "SIXTEENTH", "SEVENTEENTH", "EIGHTEENTH", "NINETEENTH")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# Voices of the espeakng-loader data: English accents x variants (all checked to load).
_ACCENTS = ("en-us", "en", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc",
            "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
             "klatt", "klatt2", "klatt3", "Andy", "Annie", "Denis", "Michael")


def _two_digits(n: int) -> str:
    if n < 10:
        return _ONES[n]
    if n < 20:
        return _TEENS[n - 10]
    return _TENS[n // 10] + (f" {_ONES[n % 10]}" if n % 10 else "")


def _number(rng: np.random.Generator) -> str:
    """A number read as AN4 speakers read them: 'FIFTY SIX', 'FOUR FIFTY SIX', 'FIFTY ONE
    FIFTY SIX', 'EIGHT HUNDRED AND TWENTY THREE', 'TWO THOUSAND ...'."""
    kind = rng.choice(4, p=[0.45, 0.25, 0.2, 0.1])
    if kind == 0:
        return _two_digits(int(rng.integers(1, 100)))
    if kind == 1:  # 100..999 as "X YY" / "X OH Y"
        hundreds, rest = int(rng.integers(1, 10)), int(rng.integers(0, 100))
        tail = _two_digits(rest) if rest >= 10 else f"OH {_ONES[rest]}"
        return f"{_ONES[hundreds]} {tail}"
    if kind == 2:  # pairs: "FIFTY ONE FIFTY SIX"
        first, second = (int(v) for v in rng.integers(10, 100, size=2))
        return f"{_two_digits(first)} {_two_digits(second)}"
    value = int(rng.integers(100, 10000))
    words = []
    if value >= 1000:
        words += [_ONES[value // 1000], "THOUSAND"]
    if value % 1000 >= 100:
        words += [_ONES[value % 1000 // 100], "HUNDRED"]
    if value % 100:
        words += ["AND", _two_digits(value % 100)]
    return " ".join(words)


def _digits(rng: np.random.Generator, lo: int, hi: int) -> str:
    out = []
    for d in rng.integers(0, 10, size=int(rng.integers(lo, hi + 1))):
        out.append(("ZERO", "OH")[int(rng.integers(2))] if d == 0 else _ONES[d])
    return " ".join(out)


def _letters(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(_LETTERS[i] for i in rng.integers(0, 26, size=int(rng.integers(lo, hi + 1))))


def _ordinal(day: int) -> str:
    if day < 10:
        return _ORDINAL_ONES[day]
    if day < 20:
        return _ORDINAL_TEENS[day - 10]
    if day % 10 == 0:
        return _TENS[day // 10][:-1] + "IETH"
    return f"{_TENS[day // 10]} {_ORDINAL_ONES[day % 10]}"


def _transcript(rng: np.random.Generator) -> str:
    kind = rng.choice(7, p=[0.12, 0.18, 0.25, 0.15, 0.13, 0.1, 0.07])
    if kind == 0:
        return str(rng.choice(_COMMANDS))
    if kind == 1:
        return "ENTER " + (_number(rng) if rng.random() < 0.6 else _digits(rng, 1, 4))
    if kind == 2:
        prefix = ("ERASE ", "RUBOUT ", "")[int(rng.choice(3, p=[0.35, 0.35, 0.3]))]
        tail = _number(rng) if rng.random() < 0.6 else _digits(rng, 1, 4)
        return f"{prefix}{_letters(rng, 1, 5)} {tail}"
    if kind == 3:
        return _letters(rng, 3, 9)
    if kind == 4:
        return _digits(rng, 4, 10)
    if kind == 5:
        year = f"NINETEEN {_two_digits(int(rng.integers(20, 100)))}"
        month, day = _MONTHS[int(rng.integers(12))], int(rng.integers(1, 32))
        if rng.random() < 0.5:
            return f"{month} {_ordinal(day)} {year}"
        return f"{_two_digits(int(rng.integers(1, 13)))} {_two_digits(day)} {year.split(' ', 1)[1]}"
    return _number(rng)


def synthetic_transcripts(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """The upper-case transcripts :func:`load_synthetic_an4` speaks (same seed, same split).

    Args:
      n: utterances.
      seed: corpus seed.
      split: ``"train"`` or ``"test"``.

    Returns:
      ``n`` transcripts like ``"RUBOUT T G J W B SEVENTY NINE"``.
    """
    return [_transcript(_utterance_rng(seed, split, i)) for i in range(n)]


def _utterance_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 1, "test": 2}[split], index])


def _espeak_text(transcript: str) -> str:
    """What eSpeak is given: the letter A alone reads as the article /@/, 'eh' as /eI/."""
    return " ".join("eh" if w == "A" else w for w in transcript.split())


class _Utterance(NamedTuple):
    transcript: str
    job: dict
    post: dict


def _plan(seed: int, split: str, index: int, snr_db: tuple[float, float]) -> _Utterance:
    rng = _utterance_rng(seed, split, index)
    transcript = _transcript(rng)
    variant = _VARIANTS[int(rng.integers(len(_VARIANTS)))]
    accent = _ACCENTS[int(rng.integers(len(_ACCENTS)))]
    job = {
        "text": _espeak_text(transcript),
        "voice": f"{accent}+{variant}" if variant else accent,
        "rate": int(rng.integers(130, 211)),
        "pitch": int(rng.integers(25, 76)),
        "range": int(rng.integers(20, 91)),
        "wordgap": int(rng.integers(0, 3)),
        "seed": int(rng.integers(1, 2**31 - 1)),
    }
    post = {
        "speed_down": 441 + int(rng.integers(-30, 31)),  # 22,050 Hz -> 16 kHz, speed +-7%
        "tilt": float(rng.uniform(-0.6, 0.6)),
        "lead_s": float(rng.uniform(0.05, 0.35)),
        "tail_s": float(rng.uniform(0.05, 0.35)),
        "rms_dbfs": float(rng.uniform(-32.0, -16.0)),
        "snr_db": float(rng.uniform(*snr_db)),
        "noise_colour": int(rng.integers(3)),  # white, pink, brown
        "noise_seed": int(rng.integers(2**31 - 1)),
    }
    return _Utterance(transcript, job, post)


def _coloured_noise(n: int, colour: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == 0 or n < 4:
        return white
    spec = np.fft.rfft(white)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec = spec / f ** (colour / 2.0)  # 1/f (pink) or 1/f^2 (brown) power
    spec[0] = 0.0
    out = np.fft.irfft(spec, n)
    return out / (out.std() + 1e-12)


def _post_process(audio: np.ndarray, post: dict) -> np.ndarray:
    """22,050 Hz int16 eSpeak output -> augmented 16 kHz int16."""
    x = audio.astype(np.float64) / 32768.0
    # Read as if recorded at 22,050 * speed_down / 441 Hz: faster (and higher) when > 441.
    x = resample(x, ESPEAK_RATE * post["speed_down"] / 441, SAMPLE_RATE)
    x = x + post["tilt"] * np.concatenate([[0.0], x[:-1]])  # random first-order channel
    rms = np.sqrt(np.mean(x ** 2)) if x.size else 0.0
    if rms > 0:
        x = x * (10 ** (post["rms_dbfs"] / 20) / rms)
    x = np.concatenate([np.zeros(int(post["lead_s"] * SAMPLE_RATE)), x,
                        np.zeros(int(post["tail_s"] * SAMPLE_RATE))])
    speech_rms = 10 ** (post["rms_dbfs"] / 20)
    noise = _coloured_noise(x.size, post["noise_colour"], np.random.default_rng(post["noise_seed"]))
    x = x + noise * speech_rms * 10 ** (-post["snr_db"] / 20)
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _espeak_paths() -> tuple[str, str, str]:
    try:
        import espeakng_loader
    except ImportError:
        raise DataUnavailableError(
            "The synthetic AN4 corpus needs eSpeak NG from the PyPI wheel 'espeakng-loader', "
            f"which is not installed. Fix: pip install '{ESPEAK_SPEC}' (or "
            "pip install 'gpjax-incremental[speech]'), or use load_an4 with CMU's AN4.") from None
    if not hasattr(os, "fork"):
        raise DataUnavailableError(
            "Synthesising the corpus needs os.fork (Linux or macOS): each utterance is spoken "
            "by a freshly forked process for determinism. Fix: synthesise it on Linux/macOS "
            "and copy the cache file (synthetic_an4-*.npz) here.")
    lib, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    if not Path(lib).is_file():
        raise DataUnavailableError(f"espeakng-loader is installed but {lib} is missing. Fix: "
                                   f"pip install --force-reinstall '{ESPEAK_SPEC}'.")
    try:
        version = importlib.metadata.version("espeakng-loader")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return lib, data, version


# The synthesis worker: a fresh interpreter (no numpy, no threads) that initialises eSpeak NG
# once, then forks a child per utterance, so every utterance starts from the same library state.
_WORKER_SRC = r"""
import ctypes, json, os, struct, sys
lib_path, data_path = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(lib_path)
c_int, c_uint, c_void_p = ctypes.c_int, ctypes.c_uint, ctypes.c_void_p
lib.espeak_Initialize.argtypes = [c_int, c_int, ctypes.c_char_p, c_int]
lib.espeak_Initialize.restype = c_int
lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
lib.espeak_SetParameter.argtypes = [c_int, c_int, c_int]
lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, c_uint, c_int, c_uint, c_uint,
                             c_void_p, c_void_p]
AUDIO_OUTPUT_SYNCHRONOUS, INITIALIZE_DONT_EXIT = 2, 0x8000
rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), INITIALIZE_DONT_EXIT)
if rate <= 0:
    sys.stderr.write("espeak_Initialize failed (%d) with data %s\n" % (rate, data_path))
    sys.exit(2)
chunks = []
CALLBACK = ctypes.CFUNCTYPE(c_int, ctypes.POINTER(ctypes.c_short), c_int, c_void_p)
@CALLBACK
def on_audio(wav, n, events):
    if wav and n > 0:
        chunks.append(ctypes.string_at(wav, 2 * n))
    return 0
lib.espeak_SetSynthCallback(on_audio)
set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
libc = ctypes.CDLL(None)
PARAMS = (("rate", 1), ("pitch", 3), ("range", 4), ("wordgap", 7))
POS_CHARACTER, CHARS_UTF8 = 1, 1
jobs = json.loads(sys.stdin.buffer.read())
out = sys.stdout.buffer
out.write(struct.pack("<i", rate))
for job in jobs:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        status = 0
        try:
            if lib.espeak_SetVoiceByName(job["voice"].encode()) != 0:
                status = 3
            else:
                for key, code in PARAMS:
                    lib.espeak_SetParameter(code, int(job[key]), 0)
                if set_seed is not None:
                    set_seed(ctypes.c_long(int(job["seed"])))
                libc.srand(ctypes.c_uint(int(job["seed"])))
                text = job["text"].encode() + b"\0"
                if lib.espeak_Synth(text, len(text), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None):
                    status = 4
                lib.espeak_Synchronize()
            view = memoryview(b"".join(chunks))
            while view:
                view = view[os.write(w, view):]
        except BaseException:
            status = 5
        os._exit(status)
    os.close(w)
    parts = []
    while True:
        block = os.read(r, 1 << 16)
        if not block:
            break
        parts.append(block)
    os.close(r)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        why = {3: "unknown voice", 4: "espeak_Synth failed"}.get(code, "crashed")
        sys.stderr.write("eSpeak NG %s (code %d) on %r\n" % (why, code, job))
        sys.exit(3)
    data = b"".join(parts)
    out.write(struct.pack("<q", len(data)))
    out.write(data)
out.flush()
"""


def _run_worker(lib: str, data: str, jobs: list[dict]) -> list[np.ndarray]:
    proc = subprocess.run([sys.executable, "-I", "-c", _WORKER_SRC, lib, data],
                          input=json.dumps(jobs).encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("eSpeak NG synthesis failed: "
                           + proc.stderr.decode(errors="replace").strip()[-2000:])
    buf = proc.stdout
    (rate,) = struct.unpack_from("<i", buf, 0)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"eSpeak NG runs at {rate} Hz, expected {ESPEAK_RATE}.")
    pos, out = 4, []
    for _ in jobs:
        (size,) = struct.unpack_from("<q", buf, pos)
        pos += 8
        out.append(np.frombuffer(buf[pos:pos + size], np.int16).copy())
        pos += size
    return out


def espeak_synthesize(jobs: Sequence[dict], *, workers: int | None = None) -> list[np.ndarray]:
    """Speaks texts with eSpeak NG (from ``espeakng-loader``), each from a fresh library state.

    Args:
      jobs: dicts with ``text`` (str), ``voice`` (e.g. ``"en-us+f3"``), ``rate`` (words per
        minute, 80-450), ``pitch`` (0-100), ``range`` (pitch range, 0-100), ``wordgap`` (extra
        pause between words, 10 ms units) and ``seed`` (eSpeak's noise generator).
      workers: parallel worker processes (default ``min(4, cpu_count)``); the output does not
        depend on it.

    Returns:
      One int16 ``[S_i]`` array per job at 22,050 Hz.

    Raises:
      DataUnavailableError: ``espeakng-loader`` is not installed.
      RuntimeError: the synthesis failed (an unknown voice, say).
    """
    lib, data, _ = _espeak_paths()
    jobs = list(jobs)
    if not jobs:
        return []
    workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(jobs)))
    bounds = np.linspace(0, len(jobs), workers + 1).astype(int)
    chunks = [jobs[a:b] for a, b in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda c: _run_worker(lib, data, c), chunks))
    return [a for part in results for a in part]


def _synthesise_split(seed: int, split: str, n: int, snr_db: tuple[float, float],
                      workers: int | None) -> tuple[list[str], list[np.ndarray]]:
    plans = [_plan(seed, split, i, snr_db) for i in range(n)]
    raw = espeak_synthesize([p.job for p in plans], workers=workers)
    audio = [_post_process(a, p.post) for a, p in zip(raw, plans, strict=True)]
    return [p.transcript for p in plans], audio


def _pack(texts: list[str], audio: list[np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    lengths = np.array([len(a) for a in audio], np.int64)
    return {
        f"{prefix}_audio": np.concatenate(audio) if audio else np.zeros(0, np.int16),
        f"{prefix}_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        f"{prefix}_text": np.array(texts, dtype=np.str_),
    }


def _unpack(arrays: dict[str, np.ndarray], prefix: str) -> tuple[list[str], list[np.ndarray]]:
    audio, off = arrays[f"{prefix}_audio"], arrays[f"{prefix}_offsets"]
    return ([str(t) for t in arrays[f"{prefix}_text"]],
            [audio[off[i]:off[i + 1]] for i in range(len(off) - 1)])


def _find_cache(cache: Path, options: dict) -> Path | None:
    want = {k: v for k, v in options.items() if k != "espeakng_loader"}
    for p in sorted(cache.glob("synthetic_an4-*.npz")):
        try:
            with np.load(p) as z:
                have = json.loads(str(z["options"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
        if {k: v for k, v in have.items() if k != "espeakng_loader"} == want:
            return p
    return None


def load_synthetic_an4(n_train: int = 948, n_test: int = 130, *, n_validation: int = 100,
                       seed: int = 0, cache_dir: str | os.PathLike | None = None,
                       n_mfcc: int = NUM_MFCC, normalize: bool = True,
                       snr_db: tuple[float, float] = (10.0, 30.0),
                       workers: int | None = None) -> SpeechDataset:
    """An AN4-like corpus spoken by eSpeak NG, offline (see the module docstring).

    The default sizes are AN4's: 948 train utterances of which 100 are held out as validation,
    and 130 test utterances. Train and test utterances are drawn independently from one
    distribution of transcripts and voices.

    Args:
      n_train: training utterances, validation included.
      n_test: test utterances.
      n_validation: training utterances held out as validation (seeded random choice).
      seed: the corpus seed: same seed, identical audio, transcripts and split.
      cache_dir: directory of the audio cache (default ``data_dir() / "speech"``).
      n_mfcc: MFCCs per frame (``F``).
      normalize: per-utterance mean/variance normalisation of the MFCCs.
      snr_db: range of the signal-to-noise ratio of the added noise.
      workers: synthesis processes (default ``min(4, cpu_count)``); no effect on the output.

    Returns:
      A :class:`SpeechDataset` with ``source`` naming the generator, seed and cache file.

    Raises:
      DataUnavailableError: ``espeakng-loader`` is missing and the corpus is not cached.
      ValueError: bad sizes.
    """
    if n_train < 1 or n_test < 0:
        raise ValueError(f"load_synthetic_an4: need n_train >= 1 and n_test >= 0, got "
                         f"n_train={n_train}, n_test={n_test}.")
    if not 0 <= n_validation < n_train:
        raise ValueError(f"load_synthetic_an4: n_validation={n_validation} must be in "
                         f"0..n_train-1={n_train - 1}.")
    try:
        version = importlib.metadata.version("espeakng-loader")
    except importlib.metadata.PackageNotFoundError:
        version = "none"
    options = {"generator": SYNTHETIC_VERSION, "espeakng_loader": version, "seed": seed,
               "n_train": n_train, "n_test": n_test, "snr_db": [float(s) for s in snr_db]}
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else data_dir() / "speech"
    path = cache / f"synthetic_an4-{key}.npz"
    if version == "none":  # no eSpeak here: any cache made with the same options will do
        path = _find_cache(cache, options) or path
    arrays = None
    if path.exists():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a damaged cache: rebuild it
    if arrays is None:
        snr = (float(snr_db[0]), float(snr_db[1]))
        arrays = {"options": np.array(json.dumps(options, sort_keys=True))}
        for split, n in (("train", n_train), ("test", n_test)):
            texts, audio = _synthesise_split(seed, split, n, snr, workers)
            arrays.update(_pack(texts, audio, split))
        cache.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: an interrupted or concurrent run never leaves a partial cache.
        with tempfile.NamedTemporaryFile(dir=cache, suffix=".npz.tmp", delete=False) as tmp:
            np.savez(tmp, **arrays)
        os.replace(tmp.name, path)
        how = "synthesised"
    else:
        how = "cached"
    splits = {}
    for split in ("train", "test"):
        texts, audio = _unpack(arrays, split)
        splits[split] = make_speech_split(_features(audio, n_mfcc, normalize), texts)
    train, validation = _split_validation(splits["train"], n_validation, seed,
                                          "load_synthetic_an4")
    source = (f"synthetic:espeak-ng(espeakng-loader {version}) v{SYNTHETIC_VERSION} seed={seed} "
              f"{how}:{path}")
    return SpeechDataset(train, validation, splits["test"], source)
