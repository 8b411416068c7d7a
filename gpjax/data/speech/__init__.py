"""Speech data for DeepSpeech2-H-LSTM: AN4 as CMU distributes it, an offline AN4-like corpus
synthesised with eSpeak NG, MFCC features, and a character vocabulary for CTC.

Both loaders, :func:`load_an4` and :func:`load_synthetic_an4`, return a :class:`SpeechDataset`
``(train, validation, test, source)`` of padded :class:`SpeechSplit` values ready for a CTC
model (``features [N, T_max, F]``, ``feature_lengths``, ``labels [N, L_max]``,
``label_lengths``, ``transcripts``)::

    for batch in iterate_batches(data.train, 32, shuffle=True, seed=epoch):
        logits, logit_paddings = model.apply(params, batch.features, batch.feature_paddings)
        loss = optax.ctc_loss(logits, logit_paddings, batch.labels, batch.label_paddings)

One concept per module (all names below are importable from here):

* :mod:`~gpjax.data.speech.ctc`: :data:`BLANK_ID` (0) and :func:`lengths_to_paddings`
  (1.0 = padded), the conventions shared with :mod:`gpjax.models.deepspeech2`;
* :mod:`~gpjax.data.speech.text`: :data:`VOCAB` (blank, space, apostrophe, ``a``-``z``),
  :func:`encode_text`, :func:`decode_ids`, :func:`normalize_transcript`;
* :mod:`~gpjax.data.speech.features`: :func:`mfcc` / :func:`mfcc_batch` (26 coefficients per
  10 ms frame in the loaders, per-utterance normalised), :func:`resample`;
* :mod:`~gpjax.data.speech.splits`: :class:`SpeechSplit`, :class:`SpeechDataset`,
  :class:`SpeechBatch`, :func:`make_speech_split`, :func:`iterate_batches`;
* :mod:`~gpjax.data.speech.an4`: CMU's AN4 (raw/SPHERE/WAV), :func:`load_an4`;
* :mod:`~gpjax.data.speech.transcripts`: the grammar of the synthetic corpus' transcripts;
* :mod:`~gpjax.data.speech.espeak`: eSpeak NG (PyPI ``espeakng-loader``) driven
  deterministically, one forked worker state per utterance;
* :mod:`~gpjax.data.speech.synthetic`: :func:`load_synthetic_an4`, voices, augmentation and
  the audio cache.
"""

from gpjax.data.speech.an4 import (
    AN4_SIZES,
    load_an4,
    read_an4_transcription,
    read_audio,
    read_raw_pcm,
    read_sphere,
)
from gpjax.data.speech.ctc import BLANK_ID, lengths_to_paddings
from gpjax.data.speech.espeak import ESPEAK_RATE, ESPEAK_SPEC, espeak_synthesize
from gpjax.data.speech.features import (
    NUM_MFCC,
    SAMPLE_RATE,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    mfcc,
    mfcc_batch,
    resample,
    utterance_features,
)
from gpjax.data.speech.splits import (
    SpeechBatch,
    SpeechDataset,
    SpeechSplit,
    iterate_batches,
    make_speech_split,
)
from gpjax.data.speech.synthetic import ACCENTS, SYNTHETIC_VERSION, VARIANTS, load_synthetic_an4
from gpjax.data.speech.text import VOCAB, VOCAB_SIZE, decode_ids, encode_text, normalize_transcript
from gpjax.data.speech.transcripts import synthetic_transcripts

__all__ = [
    "ACCENTS",
    "AN4_SIZES",
    "BLANK_ID",
    "ESPEAK_RATE",
    "ESPEAK_SPEC",
    "NUM_MFCC",
    "SAMPLE_RATE",
    "SYNTHETIC_VERSION",
    "VARIANTS",
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
    "utterance_features",
]
