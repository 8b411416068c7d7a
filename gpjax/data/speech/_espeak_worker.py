"""The eSpeak NG synthesis worker, run as a script in a fresh interpreter (standard library
only: no numpy, no threads), never imported by the package::

    python -I path/to/_espeak_worker.py LIB_PATH DATA_PATH < jobs.json > audio.bin

It initialises eSpeak NG once, then forks a child per job, so every utterance starts from the
same library state (eSpeak keeps state between utterances: in one process the same call does
not give the same samples twice). Protocol: stdin is a JSON list of jobs (see
:func:`gpjax.data.speech.espeak.espeak_synthesize`); stdout is the sample rate as a
little-endian int32, then per job an int64 byte count and that many bytes of native int16
samples. Exit status 2: the library did not initialise; 3: a job failed (reason on stderr).
"""

import ctypes
import json
import os
import struct
import sys

AUDIO_OUTPUT_SYNCHRONOUS, INITIALIZE_DONT_EXIT = 2, 0x8000
PARAMS = (("rate", 1), ("pitch", 3), ("range", 4), ("wordgap", 7))
POS_CHARACTER, CHARS_UTF8 = 1, 1


def main(lib_path: str, data_path: str) -> None:
    """Synthesises the jobs on stdin (see the module docstring)."""
    lib = ctypes.CDLL(lib_path)
    c_int, c_uint, c_void_p = ctypes.c_int, ctypes.c_uint, ctypes.c_void_p
    lib.espeak_Initialize.argtypes = [c_int, c_int, ctypes.c_char_p, c_int]
    lib.espeak_Initialize.restype = c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [c_int, c_int, c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, c_uint, c_int, c_uint,
                                 c_uint, c_void_p, c_void_p]
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(),
                                 INITIALIZE_DONT_EXIT)
    if rate <= 0:
        sys.stderr.write(f"espeak_Initialize failed ({rate}) with data {data_path}\n")
        sys.exit(2)
    chunks = []
    callback_type = ctypes.CFUNCTYPE(c_int, ctypes.POINTER(ctypes.c_short), c_int, c_void_p)

    @callback_type
    def on_audio(wav, n, events):
        if wav and n > 0:
            chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    lib.espeak_SetSynthCallback(on_audio)
    set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
    libc = ctypes.CDLL(None)
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
                    if lib.espeak_Synth(text, len(text), 0, POS_CHARACTER, 0, CHARS_UTF8, None,
                                        None):
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
            sys.stderr.write(f"eSpeak NG {why} (code {code}) on {job!r}\n")
            sys.exit(3)
        data = b"".join(parts)
        out.write(struct.pack("<q", len(data)))
        out.write(data)
    out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
