"""Tests of the eSpeak NG synthetic corpus (gpjax.data.speech.synthetic): pure per-utterance
synthesis, every voice, determinism and cache, non-triviality, conditions, the missing-wheel
error, the cached corpus without eSpeak, a larger corpus."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys

import numpy as np
import pytest

from gpjax.data import speech
from gpjax.data.cache import DataUnavailableError
from gpjax.data.speech import (
    load_synthetic_an4,
    synthetic,
)

# ============================================================================ vocabulary

# ============================================================================ synthetic corpus


def _needs_espeak():
    if not hasattr(os, "fork"):
        pytest.skip("the synthesis forks a process per utterance (Linux/macOS only)")
    return pytest.importorskip(
        "espeakng_loader", reason="espeakng-loader has no wheel for this platform")


def test_espeak_synthesis_pure_per_utterance():
    _needs_espeak()
    jobs = [{"text": t, "voice": v, "rate": r, "pitch": p, "range": 50, "wordgap": 0, "seed": 7}
            for t, v, r, p in [("YES", "en-us", 175, 50), ("R U B O U T", "en-gb-x-rp+f3", 140, 70),
                               ("eh B C", "en-029+klatt2", 200, 30)]]
    first = speech.espeak_synthesize(jobs, workers=1)
    second = speech.espeak_synthesize(jobs[::-1], workers=2)[::-1]
    assert all(a.dtype == np.int16 and a.size > 2000 for a in first)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)  # the order and worker count do not matter
    assert first[1].size != first[0].size


def test_every_voice_loads():
    _needs_espeak()
    jobs = [{"text": "GO", "voice": f"{a}+{v}" if v else a, "rate": 175, "pitch": 50, "range": 50,
                 "wordgap": 0, "seed": 1}
            for a, v in [(a, "") for a in speech.ACCENTS]
            + [("en-us", v) for v in speech.VARIANTS]]
    audio = speech.espeak_synthesize(jobs)
    assert all(a.size > 1000 for a in audio)


def test_synthetic_corpus_determinism_and_cache(tmp_path, monkeypatch):
    _needs_espeak()
    kw = {"n_train": 5, "n_test": 2, "n_validation": 1, "cache_dir": tmp_path}
    a = load_synthetic_an4(seed=0, **kw)
    assert "synthesised" in a.source
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    assert (len(a.train), len(a.validation), len(a.test)) == (4, 1, 2)

    def no_synthesis(*args, **kwargs):
        raise AssertionError("the second call must read the cache")

    monkeypatch.setattr(synthetic, "espeak_synthesize", no_synthesis)
    b = load_synthetic_an4(seed=0, **kw)
    assert "cached" in b.source
    for sa, sb in zip(a[:3], b[:3], strict=True):
        for x, y in zip(sa, sb, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    monkeypatch.undo()

    c = load_synthetic_an4(seed=1, **kw)
    assert c.train.transcripts + c.test.transcripts != a.train.transcripts + a.test.transcripts
    with np.load(files[0]) as z:
        assert json.loads(str(z["options"]))["seed"] == 0
    # the transcripts spoken are the documented generator's
    assert sorted(a.train.transcripts + a.validation.transcripts) == sorted(
        t.lower() for t in speech.synthetic_transcripts(5, seed=0, split="train"))


def test_synthetic_corpus_is_not_trivial(tmp_path):
    _needs_espeak()
    data = load_synthetic_an4(n_train=6, n_test=2, n_validation=1, seed=3, cache_dir=tmp_path)
    with np.load(next(tmp_path.glob("*.npz"))) as z:
        audio, offsets = z["train_audio"], z["train_offsets"]
    utts = [audio[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    for u in utts:
        lead = u[:800].astype(np.float64)  # the first 50 ms are padding: only noise there
        assert lead.std() > 0.5 and np.abs(lead).max() < np.abs(u).max() / 2
    plans = [synthetic._plan(3, "train", i, (10.0, 30.0)) for i in range(6)]
    assert len({p.job["voice"] for p in plans}) > 1 and len({p.job["rate"] for p in plans}) > 1
    assert len({round(p.post["snr_db"]) for p in plans}) > 1
    f = data.train.features
    for i in range(len(data.train)):
        for j in range(i):
            assert not np.array_equal(f[i], f[j])
    assert np.isfinite(f).all()
    # CTC needs, after DeepSpeech2's 2x time stride, at least label + repeats frames
    for s in (data.train, data.validation, data.test):
        for i in range(len(s)):
            lab = s.labels[i, : s.label_lengths[i]]
            need = len(lab) + int(np.sum(lab[1:] == lab[:-1]))
            assert -(-int(s.feature_lengths[i]) // 2) >= need


def test_synthetic_conditions_narrow_the_voices_and_rates(tmp_path):
    _needs_espeak()
    kw = {"n_train": 3, "n_test": 1, "n_validation": 1, "seed": 2, "cache_dir": tmp_path}
    easy = load_synthetic_an4(voices=["en-us"], rate_wpm=(150, 150), snr_db=(35.0, 35.0), **kw)
    plans = [synthetic._plan(2, "train", i, (35.0, 35.0), ["en-us"], (150, 150))
             for i in range(3)]
    assert {p.job["voice"] for p in plans} == {"en-us"} and {p.job["rate"] for p in plans} == {150}
    default = load_synthetic_an4(**kw)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # the conditions are part of the cache key
    # same transcripts (drawn before the voice), different audio
    assert easy.train.transcripts == default.train.transcripts
    assert not np.array_equal(easy.test.features, default.test.features)
    with pytest.raises(ValueError, match="voices='en-us' must be a non-empty sequence"):
        load_synthetic_an4(voices="en-us", **kw)
    with pytest.raises(ValueError, match="rate_wpm"):
        load_synthetic_an4(rate_wpm=(200, 100), **kw)



def test_missing_espeak_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import now raises ImportError
    with pytest.raises(DataUnavailableError, match=r"pip install 'espeakng-loader"):
        speech.espeak_synthesize([{"text": "YES", "voice": "en-us", "rate": 175, "pitch": 50,
                                   "range": 50,
                                       "wordgap": 0, "seed": 0}])
    with pytest.raises(DataUnavailableError, match="espeakng-loader"):
        load_synthetic_an4(n_train=2, n_test=1, n_validation=1, cache_dir=tmp_path)


def test_cached_corpus_loads_without_espeak(tmp_path, monkeypatch):
    _needs_espeak()
    kw = {"n_train": 2, "n_test": 1, "n_validation": 1, "seed": 4, "cache_dir": tmp_path}
    a = load_synthetic_an4(**kw)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: (_ for _ in ()).throw(
                            importlib.metadata.PackageNotFoundError(name)))
    b = load_synthetic_an4(**kw)
    assert "cached" in b.source
    np.testing.assert_array_equal(a.test.features, b.test.features)


@pytest.mark.slow
def test_synthetic_corpus_larger(tmp_path):
    _needs_espeak()
    data = load_synthetic_an4(n_train=130, n_test=20, seed=0, cache_dir=tmp_path)
    assert (len(data.train), len(data.validation), len(data.test)) == (30, 100, 20)
    seconds = data.train.feature_lengths / 100.0
    assert 0.5 < seconds.min() and seconds.max() < 12.0
    words = {w for t in data.train.transcripts + data.validation.transcripts for w in t.split()}
    assert {"enter", "yes", "a"} <= words or len(words) > 30


# ============================================================================ DeepSpeech2 cells
