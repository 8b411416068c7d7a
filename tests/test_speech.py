"""Tests of gpjax.data.speech: vocabulary, MFCC (against the textbook formula), resampling, the
padded dataset values and length buckets, the AN4 reader (on files written here in CMU's
formats). The eSpeak corpus: tests/test_speech_synthetic.py; DS2's LSTM cell:
tests/test_deepspeech2_cells.py."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpjax.data import speech
from gpjax.data.speech import (
    BLANK_ID,
    VOCAB,
    VOCAB_SIZE,
    SpeechDataset,
    SpeechSplit,
    decode_ids,
    encode_text,
    iterate_batches,
    load_an4,
    make_speech_split,
    mfcc,
    read_an4_transcription,
    read_raw_pcm,
    read_sphere,
    resample,
)

# ============================================================================ vocabulary


def test_vocab_layout():
    assert len(VOCAB) == VOCAB_SIZE == 29
    assert BLANK_ID == 0
    assert VOCAB[1] == " " and VOCAB[2] == "'" and VOCAB[3] == "a" and VOCAB[-1] == "z"


def test_encode_decode_roundtrip():
    ids = encode_text("<s> ENTER  Six don't </s>")
    assert ids.dtype == np.int32
    assert BLANK_ID not in ids
    assert decode_ids(ids) == "enter six don't"
    assert decode_ids([0, 3, 0, 0, 4]) == "ab"  # blanks (and label padding) dropped
    assert encode_text("").shape == (0,)


def test_encode_rejects_digits_and_decode_rejects_bad_ids():
    with pytest.raises(ValueError, match="spell digits as words"):
        encode_text("ENTER 6")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode_ids([3, 29])


# ============================================================================ MFCC vs textbook


def _textbook_mfcc(x, sr, n_mfcc, frame_ms, hop_ms, n_fft, n_mels, f_min, f_max, pre, floor,
                   explicit_dft):
    """MFCC written out from the formulas, loops and all, independently of the library."""
    x = [float(v) for v in x]
    y = [x[0]] + [x[n] - pre * x[n - 1] for n in range(1, len(x))]
    L = round(sr * frame_ms / 1000)
    H = round(sr * hop_ms / 1000)
    if len(y) < L:
        y = y + [0.0] * (L - len(y))
    n_frames = 1 + (len(y) - L) // H

    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def inv_mel(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    m_lo, m_hi = mel(f_min), mel(f_max)
    corners = [inv_mel(m_lo + (m_hi - m_lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    n_bins = n_fft // 2 + 1
    out = []
    for t in range(n_frames):
        frame = [y[t * H + n] * (0.54 - 0.46 * math.cos(2 * math.pi * n / (L - 1)))
                 for n in range(L)] + [0.0] * (n_fft - L)
        power = []
        for k in range(n_bins):
            if explicit_dft:
                re = sum(frame[n] * math.cos(2 * math.pi * k * n / n_fft) for n in range(n_fft))
                im = -sum(frame[n] * math.sin(2 * math.pi * k * n / n_fft) for n in range(n_fft))
                power.append((re * re + im * im) / n_fft)
        if not explicit_dft:  # the same sum as a matrix product, for the larger case
            n = np.arange(n_fft)
            k = np.arange(n_bins)[:, None]
            spec = (np.exp(-2j * np.pi * k * n / n_fft) * np.array(frame)).sum(axis=1)
            power = list(np.abs(spec) ** 2 / n_fft)
        log_e = []
        for m in range(1, n_mels + 1):
            lo, c, hi = corners[m - 1], corners[m], corners[m + 1]
            e = 0.0
            for k in range(n_bins):
                f = k * sr / n_fft
                if lo < f <= c:
                    e += power[k] * (f - lo) / (c - lo)
                elif c < f < hi:
                    e += power[k] * (hi - f) / (hi - c)
            log_e.append(math.log(max(e, floor)))
        coeffs = []
        for q in range(n_mfcc):
            s = sum(log_e[n] * math.cos(math.pi * q * (2 * n + 1) / (2 * n_mels))
                    for n in range(n_mels))
            coeffs.append(s * math.sqrt((1.0 if q == 0 else 2.0) / n_mels))
        out.append(coeffs)
    return np.array(out)


def test_mfcc_matches_textbook_small_explicit_dft():
    rng = np.random.default_rng(0)
    sr = 8000
    x = np.sin(2 * np.pi * 700 * np.arange(200) / sr) + 0.3 * rng.standard_normal(200)
    kw = {"n_mfcc": 6, "frame_ms": 4.0, "hop_ms": 2.0, "n_fft": 64, "n_mels": 8, "f_min": 0.0,
          "f_max": 4000.0}
    got = mfcc(x, sr, pre_emphasis=0.97, **kw)
    want = _textbook_mfcc(x, sr, pre=0.97, floor=1e-10, explicit_dft=True, **kw)
    assert got.shape == want.shape == (1 + (200 - 32) // 16, 6)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mfcc_matches_textbook_default_parameters():
    rng = np.random.default_rng(1)
    sr = 16000
    t = np.arange(1200) / sr
    x = (8000 * np.sin(2 * np.pi * (300 + 2000 * t) * t)
         + 300 * rng.standard_normal(t.size)).astype(np.int16)
    got = mfcc(x, sr)  # defaults: 13 MFCC, 25/10 ms, 512-FFT, 40 mels from 20 Hz
    want = _textbook_mfcc(x / 32768.0, sr, n_mfcc=13, frame_ms=25.0, hop_ms=10.0, n_fft=512,
                          n_mels=40, f_min=20.0, f_max=8000.0, pre=0.97, floor=1e-10,
                          explicit_dft=False)
    assert got.shape == (1 + (1200 - 400) // 160, 13)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mfcc_normalize_short_signal_and_errors():
    x = np.random.default_rng(2).standard_normal(4000)
    feats = mfcc(x, 16000, n_mfcc=26, normalize=True)
    np.testing.assert_allclose(feats.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(feats.std(axis=0), 1.0, atol=1e-3)
    assert mfcc(x[:100], 16000).shape == (1, 13)  # shorter than a frame: one padded frame
    with pytest.raises(ValueError, match="mono"):
        mfcc(np.zeros((100, 2)), 16000)
    with pytest.raises(ValueError, match="n_fft"):
        mfcc(x, 16000, frame_ms=50.0)
    with pytest.raises(ValueError, match="n_mfcc"):
        mfcc(x, 16000, n_mfcc=41)
    with pytest.raises(ValueError, match="cover no FFT bin"):
        mfcc(x, 8000, n_fft=64, frame_ms=4.0, n_mels=40)


def test_mfcc_batch_equals_one_by_one():
    rng = np.random.default_rng(7)
    signals = [rng.standard_normal(n) for n in (300, 4000, 2500)]
    batch = speech.mfcc_batch(signals, 16000, n_mfcc=20, normalize=True)
    for x, got in zip(signals, batch, strict=True):
        np.testing.assert_allclose(got, mfcc(x, 16000, n_mfcc=20, normalize=True), atol=1e-5)


def test_resample_sine_and_antialiasing():
    n = np.arange(22050)
    y = resample(np.sin(2 * np.pi * 1000 * n / 22050), 22050, 16000)
    assert y.shape == (16000,)
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    np.testing.assert_allclose(y[400:-400], ref[400:-400], atol=1e-6)
    above_nyquist = resample(np.sin(2 * np.pi * 10000 * n / 22050), 22050, 16000)
    assert np.sqrt(np.mean(above_nyquist[400:-400] ** 2)) < 1e-3


# ============================================================================ dataset values


def test_make_speech_split_paddings_and_batches():
    rng = np.random.default_rng(3)
    feats = [rng.standard_normal((t, 5)).astype(np.float32) for t in (7, 3, 5, 9, 4)]
    texts = ["YES", "ENTER SIX", "NO", "A B C", "GO"]
    split = make_speech_split(feats, texts)
    assert split.features.shape == (5, 9, 5) and split.labels.shape == (5, 9)
    assert split.transcripts == ["yes", "enter six", "no", "a b c", "go"]
    assert split.feature_lengths.tolist() == [7, 3, 5, 9, 4]
    assert split.label_lengths.tolist() == [3, 9, 2, 5, 2]
    np.testing.assert_array_equal(split.features[1, :3], feats[1])
    assert not split.features[1, 3:].any() and not split.labels[0, 3:].any()
    pad = split.feature_paddings()
    assert pad.dtype == np.float32 and pad[1].tolist() == [0] * 3 + [1] * 6
    assert split.label_paddings()[2].tolist() == [0, 0] + [1] * 7
    for i in range(5):
        assert decode_ids(split.labels[i, : split.label_lengths[i]]) == split.transcripts[i]

    batches = list(iterate_batches(split, 2, shuffle=True, seed=4))
    assert [len(b.indices) for b in batches] == [2, 2, 1]
    seen = np.concatenate([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(5))
    again = np.concatenate([b.indices for b in iterate_batches(split, 2, shuffle=True, seed=4)])
    np.testing.assert_array_equal(seen, again)
    assert len(list(iterate_batches(split, 2, drop_remainder=True))) == 2
    b = split.batch([1, 4], frame_multiple=4)  # longest is 4 frames -> 4
    assert b.features.shape == (2, 4, 5) and b.feature_paddings.shape == (2, 4)
    assert b.feature_paddings[0].tolist() == [0, 0, 0, 1]
    assert b.labels.shape == (2, 9) and b.label_paddings[1].tolist() == [0, 0] + [1] * 7
    sub = split.take([3, 0])
    assert sub.transcripts == ["a b c", "yes"] and sub.features.shape == (2, 9, 5)
    with pytest.raises(ValueError, match="one transcript per utterance"):
        make_speech_split(feats, texts[:2])


def test_paddings_work_with_optax_ctc_loss():
    import jax.numpy as jnp

    split = make_speech_split([np.zeros((6, 3), np.float32), np.zeros((4, 3), np.float32)],
                              ["ab", "c"])
    b = split.batch([0, 1])
    logits = jnp.zeros((2, b.features.shape[1], VOCAB_SIZE))
    loss = optax.ctc_loss(logits, b.feature_paddings, b.labels, b.label_paddings)
    assert loss.shape == (2,) and bool(jnp.all(jnp.isfinite(loss)))


# ============================================================================ AN4 reader


def _speechlike(rng: np.random.Generator, n: int) -> np.ndarray:
    """Silence, a voiced burst, silence: smooth like speech, with quiet stretches."""
    t = np.arange(n) / 16000
    env = np.exp(-((t - t.mean()) / (0.2 * t[-1])) ** 2)
    x = env * 6000 * np.sin(2 * np.pi * rng.uniform(150, 300) * t) \
        + env * 2000 * np.sin(2 * np.pi * rng.uniform(900, 1500) * t) \
        + 20 * rng.standard_normal(n)
    return x.astype(np.int16)


def _write_sphere(path: Path, x: np.ndarray, *, coding: str = "pcm", little: bool = True):
    fields = [
        "NIST_1A", "   1024", "database_id -s3 an4", f"sample_count -i {x.size}",
        "sample_rate -i 16000", "channel_count -i 1", "sample_n_bytes -i 2",
        f"sample_byte_format -s2 {'01' if little else '10'}",
        f"sample_coding -s{len(coding)} {coding}",
        "end_head",
    ]
    header = ("\n".join(fields) + "\n").encode().ljust(1024, b" ")
    path.write_bytes(header + x.astype("<i2" if little else ">i2").tobytes())


TRAIN = [("an251-fash-b", "YES"), ("an253-fash-b", "GO"), ("cen1-fash-b", "H I N I C H"),
         ("an86-fbbh-b", "C Z D Z W EIGHT"), ("an87-fbbh-b", "ENTER SIX TWO FOUR"),
         ("cen3-fbbh-b", "FIFTY ONE FIFTY SIX")]
TEST = [("an409-fcaw-b", "GO"), ("cen1-fcaw-b", "W O O D"), ("an416-fjlp-b", "NO")]


def _make_an4(root: Path, *, sphere_for=(), wav_for=()) -> dict[str, np.ndarray]:
    """Writes a miniature AN4 in CMU's layout; returns the samples of each utterance."""
    rng = np.random.default_rng(5)
    an4 = root / "an4"
    (an4 / "etc").mkdir(parents=True)
    signals = {}
    for split, items, wav_dir in (("train", TRAIN, "an4_clstk"), ("test", TEST, "an4test_clstk")):
        lines = []
        for utt, text in items:
            x = _speechlike(rng, int(rng.integers(4000, 9000)))
            signals[utt] = x
            d = an4 / "wav" / wav_dir / utt.split("-")[1]
            d.mkdir(parents=True, exist_ok=True)
            if utt in sphere_for:
                _write_sphere(d / f"{utt}.sph", x)
            elif utt in wav_for:
                with wave.open(str(d / f"{utt}.wav"), "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(16000)
                    w.writeframes(x.astype("<i2").tobytes())
            else:
                (d / f"{utt}.raw").write_bytes(x.astype(">i2").tobytes())  # big-endian, no header
            # train lines carry <s> </s>, test lines do not, as in CMU's files
            lines.append(f"<s> {text} </s> ({utt})" if split == "train" else f"{text} ({utt})")
        (an4 / "etc" / f"an4_{split}.transcription").write_text("\n".join(lines) + "\n")
        (an4 / "etc" / f"an4_{split}.fileids").write_text(
            "\n".join(f"{wav_dir}/{u.split('-')[1]}/{u}" for u, _ in items) + "\n")
    return signals


def test_read_an4_transcription_both_layouts(tmp_path):
    p = tmp_path / "t.transcription"
    p.write_text("<s> ENTER SIX </s> (an87-fbbh-b)\n\nGO (an409-fcaw-b)\n")
    assert read_an4_transcription(p) == [("an87-fbbh-b", "enter six"), ("an409-fcaw-b", "go")]
    p.write_text("<s> YES </s>\n")
    with pytest.raises(ValueError, match=r"t.transcription:1: .*utterance-id"):
        read_an4_transcription(p)


def test_load_an4_raw_sphere_and_wav(tmp_path):
    signals = _make_an4(tmp_path, sphere_for={"cen1-fash-b"}, wav_for={"an416-fjlp-b"})
    data = load_an4(tmp_path / "an4", n_validation=2, seed=0)
    assert isinstance(data, SpeechDataset) and data.source.startswith("an4:")
    assert (len(data.train), len(data.validation), len(data.test)) == (4, 2, 3)
    assert data.num_features == 26 and data.vocab_size == VOCAB_SIZE
    assert sorted(data.train.transcripts + data.validation.transcripts) == sorted(
        t.lower() for _, t in TRAIN)
    assert data.test.transcripts == [t.lower() for _, t in TEST]
    for split in data:
        if not isinstance(split, SpeechSplit):
            continue
        for i, text in enumerate(split.transcripts):
            assert decode_ids(split.labels[i, : split.label_lengths[i]]) == text
    # features are the MFCCs of exactly the samples written (raw big-endian, sphere, wav)
    everything = {t: (s, i) for s in (data.train, data.validation, data.test)
                  for i, t in enumerate(s.transcripts)}
    for utt, text in [("an87-fbbh-b", "enter six two four"), ("cen1-fash-b", "h i n i c h"),
                      ("an416-fjlp-b", "no")]:
        split, i = everything[text]
        want = mfcc(signals[utt], 16000, n_mfcc=26, normalize=True)
        assert split.feature_lengths[i] == len(want)
        np.testing.assert_allclose(split.features[i, : len(want)], want, rtol=1e-5, atol=1e-5)
        assert not split.features[i, len(want):].any()
    # the parent directory works too, and the hold-out is seeded
    again = load_an4(tmp_path, n_validation=2, seed=0)
    assert again.validation.transcripts == data.validation.transcripts
    other = [load_an4(tmp_path, n_validation=2, seed=s).validation.transcripts for s in range(1, 6)]
    assert any(o != data.validation.transcripts for o in other)


def test_an4_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no AN4 corpus"):
        load_an4(tmp_path)
    _make_an4(tmp_path)
    with pytest.raises(ValueError, match="byte-swapped.*byte_order='big'"):
        load_an4(tmp_path, n_validation=1, byte_order="little")
    (tmp_path / "an4" / "wav" / "an4test_clstk" / "fcaw" / "cen1-fcaw-b.raw").unlink()
    with pytest.raises(ValueError, match="no audio for utterance 'cen1-fcaw-b'"):
        load_an4(tmp_path, n_validation=1)
    (tmp_path / "an4" / "etc" / "an4_train.transcription").unlink()
    with pytest.raises(ValueError, match="an4_train.transcription does not exist"):
        load_an4(tmp_path, n_validation=1)


def test_raw_and_sphere_format_errors(tmp_path):
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="odd number"):
        read_raw_pcm(odd)
    x = _speechlike(np.random.default_rng(6), 3000)
    big = tmp_path / "x.sph"
    _write_sphere(big, x, little=False)
    np.testing.assert_array_equal(read_sphere(big)[0], x)
    _write_sphere(big, x, coding="pcm,embedded-shorten-v2.00")
    with pytest.raises(ValueError, match="sph2pipe"):
        read_sphere(big)
    with pytest.raises(ValueError, match="not a NIST SPHERE"):
        read_sphere(odd)



def test_lengths_to_paddings_numpy_and_jax_agree():
    lengths = np.array([0, 2, 5])
    want = np.array([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], np.float32)
    got_np = speech.lengths_to_paddings(lengths, 4)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float32
    np.testing.assert_array_equal(got_np, want)
    got_jax = jax.jit(speech.lengths_to_paddings, static_argnums=1)(jnp.asarray(lengths), 4)
    assert isinstance(got_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(got_jax), want)
    import gpjax.models.deepspeech2 as ds2  # one definition, shared with the models
    assert ds2.lengths_to_paddings is speech.lengths_to_paddings and ds2.BLANK_ID is BLANK_ID


def test_length_buckets_cut_padding_and_keep_every_utterance():
    from gpjax.data.buckets import Bucketed, length_buckets, padded_frames
    lengths = np.array([5, 40, 12, 33, 7, 20, 64, 9])
    split = make_speech_split([np.ones((n, 2), np.float32) * n for n in lengths],
                              ["a"] * len(lengths))
    data = (split.features, split.feature_paddings(), split.labels, split.label_paddings())
    bucketed = length_buckets(data, 2, batch_size=2, multiple=8)
    assert isinstance(bucketed, Bucketed)
    buckets = bucketed.parts
    assert [b[0].shape[1] for b in buckets] == [16, 64]
    assert padded_frames(bucketed) == 4 * 16 + 4 * 64 and padded_frames(data) == 8 * 64
    got = sorted(int(n) for b in buckets for n in np.sum(1 - b[1], axis=1))
    assert got == sorted(lengths.tolist())
    for f, p, _, _ in buckets:  # each utterance's frames are kept whole
        n = np.sum(1 - p, axis=1).astype(int)
        np.testing.assert_array_equal(f[:, 0, 0], n)
    assert length_buckets(data, 1, batch_size=2) is data
    assert length_buckets(data, 4, batch_size=8) is data  # fewer full batches than buckets
    with pytest.raises(ValueError, match="speech split"):
        length_buckets(data[:2], 2, batch_size=2)
