"""Speech from eSpeak NG, for generated speech corpora (no download, no audio device).

The ``espeakng-loader`` package (the ``asr`` extra) ships ``libespeak-ng`` and
its voice data. The library is driven through ``ctypes``:
``espeak_Initialize(AUDIO_OUTPUT_RETRIEVAL, ...)`` makes it hand the audio to
a synth callback instead of playing it, and the callback collects 16-bit
samples at the library's rate (22,050 Hz). The shipped build returns from
``espeak_Synth`` once the utterance is done; ``espeak_Synchronize`` after it
waits for the end where a build synthesises on its own thread.

The library is one global state per process: ``load_espeak`` initialises it
once and every ``ESpeak`` method holds a lock.

Reproducibility. eSpeak NG adds noise and jitter from its own random
generator, seeded differently in every process; ``synthesize`` reseeds it
(``espeak_ng_SetRandSeed``) before each utterance. One state remains that no
call resets, not even ``espeak_Initialize``: the phase of the pitch flutter (a
static counter of the wave generator that advances as samples are made).
So an utterance is a function of its arguments *and* of what the process
synthesised before; ``synthesize_in_new_process`` speaks a list of utterances
in order in a fresh process, which makes the samples a function of the list
alone (measured: byte-identical across runs).

Authors
 * speechbrain-slap contributors 2026
"""

import ctypes
import multiprocessing
import threading
from collections.abc import Iterator, Sequence
from functools import cache

import numpy as np

# speak_lib.h: espeak_AUDIO_OUTPUT, espeak_POSITION_TYPE, espeak_PARAMETER, flags.
AUDIO_OUTPUT_RETRIEVAL = 1
POS_CHARACTER = 1
ESPEAK_RATE, ESPEAK_PITCH, ESPEAK_RANGE = 1, 3, 4
ESPEAK_CHARS_UTF8 = 1
EE_OK = 0

# What espeak_Initialize returns: eSpeak NG's voices are made at 22,050 Hz.
SAMPLE_RATE = 22050
# Documented parameter ranges (words per minute; 0-100 for pitch and range).
RATE_RANGE = (80, 450)
PITCH_RANGE = (0, 100)

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _import_loader():
    try:
        import espeakng_loader
    except ImportError as error:
        raise ImportError(
            "eSpeak NG speech needs the espeakng-loader package (libespeak-ng and its voice "
            "data): pip install speechbrain-slap[asr]"
        ) from error
    return espeakng_loader


class ESpeak:
    """The eSpeak NG library of ``espeakng-loader``; use ``load_espeak()`` to get it.

    Raises
    ------
    ImportError
        ``espeakng-loader`` is not installed (the message names the extra).
    RuntimeError
        The shared library or its data cannot be loaded.

    Example
    -------
    >>> espeak = load_espeak()
    >>> espeak.sample_rate
    22050
    >>> wave = espeak.synthesize("hello world", voice="en-us+f2", rate=160, pitch=60)
    >>> wave.dtype, bool(0.5 < wave.size / espeak.sample_rate < 2.0)
    (dtype('int16'), True)
    """

    def __init__(self):
        loader = _import_loader()
        library_path, data_path = loader.get_library_path(), loader.get_data_path()
        try:
            lib = ctypes.CDLL(library_path)
        except OSError as error:
            raise RuntimeError(
                f"cannot load {library_path} of espeakng-loader ({error}); reinstall it: "
                "pip install --force-reinstall speechbrain-slap[asr]"
            ) from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size in bytes, with the terminating NUL
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: none)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier (unused)
            ctypes.c_void_p,  # user data (unused)
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        # buflength 0: the library's default amount of audio per callback.
        sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_RETRIEVAL, 0, data_path.encode(), 0)
        if sample_rate <= 0:
            raise RuntimeError(
                f"espeak_Initialize failed ({sample_rate}) with the voice data in {data_path}; "
                "reinstall it: pip install --force-reinstall speechbrain-slap[asr]"
            )
        if sample_rate != SAMPLE_RATE:
            raise RuntimeError(f"eSpeak NG runs at {sample_rate} Hz, expected {SAMPLE_RATE} Hz")
        self.sample_rate = SAMPLE_RATE
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._lock = threading.Lock()
        # Kept on the instance: the library calls it for as long as the process lives.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, events):
        """Synth callback: copies the samples (``wav`` is NULL at the end)."""
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0: go on synthesising

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        seed: int = 0,
    ) -> np.ndarray:
        """Speaks ``text`` with one voice at one rate and pitch.

        The samples also depend on what this process synthesised before (the
        pitch-flutter phase, see the module docstring); use
        ``synthesize_in_new_process`` where they must be reproducible.

        Arguments
        ---------
        text : str
            What to say (plain text, UTF-8).
        voice : str
            An eSpeak NG voice name, optionally with a variant: ``en-us``,
            ``en-gb-scotland+m3``, ``en+f2``.
        rate : int
            Speaking rate in words per minute (80 to 450; the default 175).
        pitch : int
            Base pitch, 0 to 100 (50 is the voice's normal pitch).
        pitch_range : int
            Pitch range (intonation), 0 (monotone) to 100.
        seed : int
            Seed of eSpeak NG's random generator (breath noise, jitter).

        Returns
        -------
        numpy.ndarray
            ``(n,)`` int16 samples at ``sample_rate``.

        Raises
        ------
        ValueError
            Empty text, an unknown voice or a parameter out of its range.

        Example
        -------
        >>> espeak = load_espeak()
        >>> slow = espeak.synthesize("one two three", rate=120)
        >>> fast = espeak.synthesize("one two three", rate=240)
        >>> bool(slow.size > 1.5 * fast.size)
        True
        """
        if not text.strip():
            raise ValueError("text to synthesise is empty")
        for name, value, (low, high) in (
            ("rate", rate, RATE_RANGE),
            ("pitch", pitch, PITCH_RANGE),
            ("pitch_range", pitch_range, PITCH_RANGE),
        ):
            if not low <= value <= high:
                raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
        encoded = text.encode("utf-8") + b"\0"
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode("utf-8")) != EE_OK:
                raise ValueError(f"eSpeak NG has no voice {voice!r} (e.g. 'en-us', 'en+f2')")
            for parameter, value in (
                (ESPEAK_RATE, rate),
                (ESPEAK_PITCH, pitch),
                (ESPEAK_RANGE, pitch_range),
            ):
                self._lib.espeak_SetParameter(parameter, int(value), 0)  # 0: absolute value
            self._lib.espeak_ng_SetRandSeed(int(seed))
            self._chunks = []
            status = self._lib.espeak_Synth(
                encoded, len(encoded), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
            )
            if status == EE_OK:
                status = self._lib.espeak_Synchronize()
            if status != EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status} on {text!r}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


@cache
def load_espeak() -> ESpeak:
    """The process's eSpeak NG library, initialised on the first call.

    Returns
    -------
    ESpeak

    Example
    -------
    >>> load_espeak() is load_espeak()
    True
    """
    return ESpeak()


def _synthesize(utterance: dict) -> np.ndarray:
    """``load_espeak().synthesize(**utterance)``, in a worker process."""
    return load_espeak().synthesize(**utterance)


def synthesize_in_new_process(
    utterances: Sequence[dict], chunksize: int = 16
) -> Iterator[np.ndarray]:
    """Speaks utterances in order in a fresh process, so that the samples depend on them only.

    Arguments
    ---------
    utterances : sequence of dict
        Keyword arguments of ``ESpeak.synthesize`` (``text``, ``voice``,
        ``rate``, ``pitch``, ``pitch_range``, ``seed``), one dict per utterance.
    chunksize : int
        Utterances sent to the worker at a time.

    Yields
    ------
    numpy.ndarray
        The int16 samples of each utterance, in order, at ``SAMPLE_RATE``.

    Example
    -------
    >>> utterances = [{"text": "one", "seed": 1}, {"text": "two", "voice": "en+f2"}]
    >>> first = [wave.size for wave in synthesize_in_new_process(utterances)]
    >>> first == [wave.size for wave in synthesize_in_new_process(utterances)]
    True
    """
    _import_loader()  # fail here, with the message naming the extra
    # One worker: the utterances are spoken one after the other, in order.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        yield from pool.imap(_synthesize, utterances, chunksize=chunksize)
