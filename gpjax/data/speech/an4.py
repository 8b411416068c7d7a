"""CMU's AN4 as distributed: transcription files, raw/SPHERE/WAV audio, :func:`load_an4`.

:func:`load_an4` reads the directory tree of CMU's ``an4_raw.bigendian.tar.gz`` (headerless
big-endian 16-bit 16 kHz PCM ``.raw``), ``an4_raw.littleendian.tar.gz`` (``byte_order=
"little"``) or ``an4_sphere.tar.gz`` (NIST SPHERE ``.sph``; converted ``.wav`` also work)::

    an4/etc/an4_train.transcription    "<s> YES </s> (an251-fash-b)"   948 lines
    an4/etc/an4_test.transcription     "GO (an409-fcaw-b)"             130 lines
    an4/wav/an4_clstk/<speaker>/<utterance>.raw|.sph                   training speakers
    an4/wav/an4test_clstk/<speaker>/<utterance>.raw|.sph               test speakers

Train is 948 utterances of which ``n_validation=100`` (a seeded random choice) are held out as
validation; test is 130 utterances.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np

from gpjax.data.speech.features import NUM_MFCC, SAMPLE_RATE, resample, utterance_features
from gpjax.data.speech.splits import SpeechDataset, make_speech_split, split_validation
from gpjax.data.speech.text import normalize_transcript

__all__ = ["AN4_SIZES", "load_an4", "read_an4_transcription", "read_audio", "read_raw_pcm",
           "read_sphere"]

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
        splits[split] = make_speech_split(utterance_features(audio, n_mfcc, normalize), texts)
    train, validation = split_validation(splits["train"], n_validation, seed, "load_an4")
    return SpeechDataset(train, validation, splits["test"], source=f"an4:{base}")
