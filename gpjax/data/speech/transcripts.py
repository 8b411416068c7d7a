"""The transcripts of the synthetic AN4-like corpus: a small grammar of AN4's utterances.

Command words YES/NO/GO/STOP/HELP/REPEAT/START, ENTER/ERASE/RUBOUT with spelled letters and
numbers, spelled random letter strings, digit strings, numbers and dates, upper case as in
AN4's transcription files. Utterance ``index`` of ``split`` under corpus ``seed`` draws from
its own generator (:func:`utterance_rng`), so a transcript never depends on the corpus size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_transcripts", "transcript", "utterance_rng"]

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


def transcript(rng: np.random.Generator) -> str:
    """One upper-case transcript drawn from ``rng``: a command word (12%), ENTER and a number or
    digits (18%), [ERASE|RUBOUT] letters and a number or digits (25%), letters (15%), digits
    (13%), a date (10%) or a number (7%)."""
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



def utterance_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of utterance ``index`` of ``split`` (``"train"``/``"test"``) under ``seed``:
    its transcript is drawn first, then (in :mod:`~gpjax.data.speech.synthetic`) its voice."""
    return np.random.default_rng([seed, {"train": 1, "test": 2}[split], index])


def synthetic_transcripts(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """The upper-case transcripts :func:`load_synthetic_an4` speaks (same seed, same split).

    Args:
      n: utterances.
      seed: corpus seed.
      split: ``"train"`` or ``"test"``.

    Returns:
      ``n`` transcripts like ``"RUBOUT T G J W B SEVENTY NINE"``.
    """
    return [transcript(utterance_rng(seed, split, i)) for i in range(n)]

