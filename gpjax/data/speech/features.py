"""Audio to features: MFCCs (numpy) and band-limited resampling.

:func:`mfcc`: pre-emphasis, 25 ms Hamming frames every 10 ms, power spectrum of a 512-point
FFT, HTK-mel triangular filterbank (40 filters), natural log, orthonormal DCT-II, and
optionally per-utterance mean/variance normalisation of each coefficient (on in the loaders,
which use :func:`utterance_features`, i.e. :func:`mfcc_batch`, the same computation over many
utterances at once). :func:`resample` changes a signal's rate through the FFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = ["NUM_MFCC", "SAMPLE_RATE", "hz_to_mel", "mel_filterbank", "mel_to_hz", "mfcc",
           "mfcc_batch", "resample", "utterance_features"]

SAMPLE_RATE = 16_000
"""Sample rate of the audio both loaders produce (AN4's)."""
NUM_MFCC = 26
"""MFCC coefficients per frame in the loaders' features (``F``)."""


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


def utterance_features(audio: Sequence[np.ndarray], n_mfcc: int = NUM_MFCC,
                       normalize: bool = True) -> list[np.ndarray]:
    """The loaders' features of 16 kHz utterances: :func:`mfcc_batch` with the defaults.

    Args:
      audio: ``N`` int16 (or float) ``[S_i]`` signals at :data:`SAMPLE_RATE`.
      n_mfcc: MFCCs per frame (``F``).
      normalize: per-utterance mean/variance normalisation.

    Returns:
      ``N`` float32 ``[T_i, n_mfcc]`` arrays (100 frames per second).
    """
    return mfcc_batch(audio, SAMPLE_RATE, n_mfcc=n_mfcc, normalize=normalize)
