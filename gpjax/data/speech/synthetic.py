"""The synthetic AN4-like corpus: offline, deterministic, from PyPI wheels only.

:func:`load_synthetic_an4` speaks the transcripts of :mod:`~gpjax.data.speech.transcripts`
with eSpeak NG (:func:`~gpjax.data.speech.espeak.espeak_synthesize`). Each utterance draws its
accent (8 English voices), voice variant (20 male/female/Klatt variants), speaking rate, pitch,
pitch range and word gap; the audio is then speed-perturbed (+-7%) while resampled to 16 kHz
(FFT, :func:`~gpjax.data.speech.features.resample`), filtered by a random first-order channel,
padded with 0.05-0.35 s of silence, set to a random level, and mixed with white/pink/brown
noise at a random SNR (10-30 dB by default). ``voices``, ``rate_wpm`` and ``snr_db`` narrow
these conditions (an easier corpus).

Every utterance is a pure function of its parameters, which are a pure function of ``(seed,
split, index)`` and the conditions: the same arguments give identical arrays whatever the
number of workers. The audio (int16, 16 kHz) is cached in
``<cache_dir>/synthetic_an4-<hash>.npz`` (default cache dir
``gpjax.data.cache.data_dir() / "speech"``), written to a temporary file and renamed, keyed by
every generation option and the ``espeakng-loader`` version; MFCCs are recomputed on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gpjax.data.cache import data_dir, read_npz, write_npz
from gpjax.data.speech.espeak import ESPEAK_RATE, espeak_synthesize, espeakng_loader_version
from gpjax.data.speech.features import NUM_MFCC, SAMPLE_RATE, resample, utterance_features
from gpjax.data.speech.splits import SpeechDataset, make_speech_split, split_validation
from gpjax.data.speech.transcripts import transcript, utterance_rng

__all__ = ["ACCENTS", "SYNTHETIC_VERSION", "VARIANTS", "load_synthetic_an4"]

SYNTHETIC_VERSION = 1
"""Bumped whenever the synthetic corpus generator changes (it is part of the cache key)."""

# Voices of the espeakng-loader data: English accents x variants (all checked to load).
ACCENTS: tuple[str, ...] = ("en-us", "en", "en-029", "en-gb-scotland", "en-gb-x-rp",
                            "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
"""The English accents an utterance's voice is drawn from."""
VARIANTS: tuple[str, ...] = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3",
                             "f4", "f5", "klatt", "klatt2", "klatt3", "Andy", "Annie", "Denis",
                             "Michael")
"""The voice variants (``""``: the accent's own voice), written ``accent+variant``."""
_RATE_WPM = (130, 210)
_SNR_DB = (10.0, 30.0)


def _espeak_text(text: str) -> str:
    """What eSpeak is given: the letter A alone reads as the article /@/, 'eh' as /eI/."""
    return " ".join("eh" if w == "A" else w for w in text.split())


class _Utterance(NamedTuple):
    transcript: str
    job: dict
    post: dict


def _plan(seed: int, split: str, index: int, snr_db: tuple[float, float],
          voices: Sequence[str] | None = None,
          rate_wpm: tuple[int, int] = _RATE_WPM) -> _Utterance:
    rng = utterance_rng(seed, split, index)
    text = transcript(rng)
    if voices is None:  # the default corpus: accent x variant
        variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
        accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
        voice = f"{accent}+{variant}" if variant else accent
    else:
        voice = voices[int(rng.integers(len(voices)))]
    job = {
        "text": _espeak_text(text),
        "voice": voice,
        "rate": int(rng.integers(rate_wpm[0], rate_wpm[1] + 1)),
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
    return _Utterance(text, job, post)


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


def _synthesise_split(seed: int, split: str, n: int, snr_db: tuple[float, float],
                      voices: Sequence[str] | None, rate_wpm: tuple[int, int],
                      workers: int | None) -> tuple[list[str], list[np.ndarray]]:
    plans = [_plan(seed, split, i, snr_db, voices, rate_wpm) for i in range(n)]
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
                       snr_db: tuple[float, float] = _SNR_DB,
                       voices: Sequence[str] | None = None,
                       rate_wpm: tuple[int, int] = _RATE_WPM,
                       workers: int | None = None) -> SpeechDataset:
    """An AN4-like corpus spoken by eSpeak NG, offline (see the module docstring).

    The default sizes are AN4's: 948 train utterances of which 100 are held out as validation,
    and 130 test utterances. Train and test utterances are drawn independently from one
    distribution of transcripts and voices. Utterance ``i`` of a split does not depend on the
    split's size (only on ``seed``, the split and the conditions), so a larger corpus extends a
    smaller one (the validation hold-out is drawn anew).

    Args:
      n_train: training utterances, validation included.
      n_test: test utterances.
      n_validation: training utterances held out as validation (seeded random choice).
      seed: the corpus seed: same seed, identical audio, transcripts and split.
      cache_dir: directory of the audio cache (default ``data_dir() / "speech"``).
      n_mfcc: MFCCs per frame (``F``).
      normalize: per-utterance mean/variance normalisation of the MFCCs.
      snr_db: range of the signal-to-noise ratio of the added noise.
      voices: eSpeak voice names (``"en-us"``, ``"en-gb-x-rp+f3"``, ...) to draw each
        utterance's voice from; default: any of :data:`ACCENTS` x :data:`VARIANTS`.
      rate_wpm: range of the speaking rate, words per minute (inclusive).
      workers: synthesis processes (default ``min(4, cpu_count)``); no effect on the output.

    Returns:
      A :class:`SpeechDataset` with ``source`` naming the generator, seed and cache file.

    Raises:
      DataUnavailableError: ``espeakng-loader`` is missing and the corpus is not cached.
      ValueError: bad sizes or conditions.
    """
    if n_train < 1 or n_test < 0:
        raise ValueError(f"load_synthetic_an4: need n_train >= 1 and n_test >= 0, got "
                         f"n_train={n_train}, n_test={n_test}.")
    if not 0 <= n_validation < n_train:
        raise ValueError(f"load_synthetic_an4: n_validation={n_validation} must be in "
                         f"0..n_train-1={n_train - 1}.")
    if voices is not None and (isinstance(voices, str) or not voices):
        raise ValueError(f"load_synthetic_an4: voices={voices!r} must be a non-empty sequence "
                         "of eSpeak voice names. Fix: e.g. voices=('en-us',), or None for all.")
    if not 80 <= rate_wpm[0] <= rate_wpm[1] <= 450:
        raise ValueError(f"load_synthetic_an4: rate_wpm={rate_wpm} must be (lo, hi) words per "
                         "minute with 80 <= lo <= hi <= 450. Fix: e.g. rate_wpm=(150, 170).")
    version = espeakng_loader_version()
    options = {"generator": SYNTHETIC_VERSION, "espeakng_loader": version, "seed": seed,
               "n_train": n_train, "n_test": n_test, "snr_db": [float(s) for s in snr_db]}
    # Conditions other than the default join the key (the default corpus keeps its old key).
    if voices is not None:
        options["voices"] = [str(v) for v in voices]
    if tuple(rate_wpm) != _RATE_WPM:
        options["rate_wpm"] = [int(r) for r in rate_wpm]
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else data_dir() / "speech"
    path = cache / f"synthetic_an4-{key}.npz"
    if version == "none":  # no eSpeak here: any cache made with the same options will do
        path = _find_cache(cache, options) or path
    arrays = read_npz(path)
    if arrays is None:
        snr = (float(snr_db[0]), float(snr_db[1]))
        rates = (int(rate_wpm[0]), int(rate_wpm[1]))
        arrays = {"options": np.array(json.dumps(options, sort_keys=True))}
        for split, n in (("train", n_train), ("test", n_test)):
            texts, audio = _synthesise_split(seed, split, n, snr, voices, rates, workers)
            arrays.update(_pack(texts, audio, split))
        write_npz(path, arrays)
        how = "synthesised"
    else:
        how = "cached"
    splits = {}
    for split in ("train", "test"):
        texts, audio = _unpack(arrays, split)
        splits[split] = make_speech_split(utterance_features(audio, n_mfcc, normalize), texts)
    train, validation = split_validation(splits["train"], n_validation, seed,
                                         "load_synthetic_an4")
    source = (f"synthetic:espeak-ng(espeakng-loader {version}) v{SYNTHETIC_VERSION} seed={seed} "
              f"{how}:{path}")
    return SpeechDataset(train, validation, splits["test"], source)
