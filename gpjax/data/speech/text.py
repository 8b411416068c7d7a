"""The character vocabulary of the speech models and the text <-> id mapping.

Id 0 is the CTC blank (:data:`~gpjax.data.speech.ctc.BLANK_ID`), then space, apostrophe and
``a``-``z`` (:data:`VOCAB`, 29 symbols). AN4 spells digits as words ("ONE TWO"), so letters
suffice; :func:`encode_text` lower-cases and rejects anything else. :func:`decode_ids` maps ids
back (blanks dropped), and :func:`gpjax.metrics.wer` compares the result with
``split.transcripts``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpjax.data.speech.ctc import BLANK_ID

__all__ = ["BLANK_ID", "VOCAB", "VOCAB_SIZE", "decode_ids", "encode_text",
           "normalize_transcript"]

VOCAB: tuple[str, ...] = ("<blank>", " ", "'", *"abcdefghijklmnopqrstuvwxyz")
"""Output symbols of a CTC model: id 0 the blank, 1 space, 2 apostrophe, 3..28 ``a``-``z``."""
VOCAB_SIZE = len(VOCAB)
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB) if i != BLANK_ID}


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

