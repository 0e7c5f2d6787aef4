"""Reading audio: any soundfile format, any rate, any channel count.

The one place where the package decodes audio. ``load_audio`` reads a file
(the inference interface, the ``slap`` command, the training pipelines, the
shard writer), ``decode_audio`` the encoded bytes of a WebDataset shard
(the training stream); both mix to mono, check the samples and resample with
``resample``. ``probe_audio`` reads a file's duration from its header (the
dataset preparation scripts), and ``audio_batches`` reads files in groups of a
budget of samples (the evaluators and the ``slap`` command).

Everything that can go wrong with an input raises ``AudioLoadError``, whose
message names the input and what was wrong, so a caller can skip one bad file
and go on with the others.

Authors
 * speechbrain-slap contributors 2026
"""

import io
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

# Larger magnitudes are in no audio format read as it stores them (integer PCM is
# scaled to [-1, 1]; a float file of 32-bit integer values reaches 2.1e9); above
# about 1e18 the power spectrum overflows float32 and the embedding is NaN.
MAX_ABS_SAMPLE = 2.0**32

# What a header may ask for (``check_header``): the rates of real audio (8 kHz
# telephony to 384 kHz studio formats, with room below for old 2-4 kHz files),
# and at most 2**30 float32 samples (4 GiB; 18.6 h of 16 kHz mono) decoded or resampled.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384_000
MAX_DECODED_SAMPLES = 2**30


class AudioLoadError(ValueError):
    """An audio input that cannot be used: missing, unreadable, empty or non-finite.

    Arguments
    ---------
    source : str
        The file (or ``"waveform i"`` for an in-memory input).
    reason : str
        What was wrong.

    Example
    -------
    >>> str(AudioLoadError("a.wav", "file not found"))
    'a.wav: file not found'
    """

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class NonFiniteResultError(ValueError):
    """A model gave a NaN or infinite result for a waveform that passed ``check_waveform``.

    Raised by the model's methods (e.g. captioning from a non-finite encoder
    output), so the caller can report the input as failed instead of a
    meaningless result; ``speechbrain_slap.evaluation.process_files`` retries
    the clips of such a batch one by one.

    Example
    -------
    >>> isinstance(NonFiniteResultError("waveform 0: NaN encoder output"), ValueError)
    True
    """


def check_waveform(wav: torch.Tensor, source: str) -> torch.Tensor:
    """Checks a mono waveform is 1-D, non-empty, finite and bounded; returns it as float32.

    A sample above ``MAX_ABS_SAMPLE`` in magnitude is refused: no audio format
    stores it, and the model's power spectrum would overflow to NaN.

    Arguments
    ---------
    wav : torch.Tensor
        Waveform.
    source : str
        Name used in the error message.

    Returns
    -------
    torch.Tensor
        ``wav`` as a 1-D float32 tensor.

    Example
    -------
    >>> check_waveform(torch.zeros(3, dtype=torch.float64), "x").dtype
    torch.float32
    """
    if wav.dim() != 1:
        raise AudioLoadError(source, f"expected a 1-D waveform, got shape {tuple(wav.shape)}")
    if wav.numel() == 0:
        raise AudioLoadError(source, "no audio samples")
    wav = wav.float()
    if not bool(torch.isfinite(wav).all()):
        bad = int((~torch.isfinite(wav)).sum())
        raise AudioLoadError(source, f"{bad} of {wav.numel()} samples are NaN or infinite")
    loud = wav.abs() > MAX_ABS_SAMPLE
    if bool(loud.any()):
        raise AudioLoadError(
            source,
            f"{int(loud.sum())} of {wav.numel()} samples exceed {MAX_ABS_SAMPLE:.3g} in "
            "magnitude (no audio format stores such values)",
        )
    return wav


def load_audio(path: str | Path, sample_rate: int = 16000) -> torch.Tensor:
    """Reads an audio file as a mono float32 waveform at ``sample_rate``.

    Any format libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3, ...), any sample
    rate (``resample``), any channel count (channels averaged). Integer files
    are scaled to [-1, 1].

    Arguments
    ---------
    path : str or Path
        Audio file.
    sample_rate : int
        Output sample rate in Hz.

    Returns
    -------
    torch.Tensor
        ``(n_samples,)`` float32 waveform.

    Raises
    ------
    AudioLoadError
        Missing file, not a regular file, a file libsndfile cannot decode, a
        sample rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``, more than
        ``MAX_DECODED_SAMPLES`` samples, no samples, or NaN/Inf or
        out-of-range samples. The message names the file.

    Example
    -------
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/tone.wav"
    >>> stereo = np.zeros((44100, 2), dtype="float32")
    >>> soundfile.write(path, stereo, 44100)
    >>> load_audio(path).shape
    torch.Size([16000])
    """
    if not isinstance(path, str | os.PathLike):
        raise AudioLoadError(
            repr(path), f"path must be a str or os.PathLike, got {type(path).__name__}"
        )
    source = str(path)
    path = Path(path)
    if not path.exists():
        raise AudioLoadError(source, "file not found")
    if not path.is_file():  # a folder, or a FIFO or device, whose reading could block
        raise AudioLoadError(source, "not a file")
    # Bytes, as the file system names it: libsndfile would encode a str as UTF-8, which
    # fails for a name that is not (``os.fsdecode`` keeps such bytes as surrogates).
    return _decode(os.fsencode(path), source, sample_rate)


def decode_audio(data: bytes, source: str, sample_rate: int = 16000) -> torch.Tensor:
    """Decodes encoded audio bytes (e.g. a shard's FLAC member) as ``load_audio`` reads files.

    Arguments
    ---------
    data : bytes
        The encoded audio (any format libsndfile reads).
    source : str
        Names the input in error messages (e.g. ``shard-000000.tar/000000042.flac``).
    sample_rate : int
        Output sample rate in Hz.

    Returns
    -------
    torch.Tensor
        ``(n_samples,)`` float32 mono waveform.

    Raises
    ------
    AudioLoadError
        Bytes libsndfile cannot decode, no samples, or NaN/Inf samples.

    Example
    -------
    >>> buffer = io.BytesIO()
    >>> soundfile.write(buffer, np.zeros(800, dtype="int16"), 8000, format="FLAC")
    >>> decode_audio(buffer.getvalue(), "a.flac").shape
    torch.Size([1600])
    >>> decode_audio(b"not audio", "b.flac")
    Traceback (most recent call last):
    ...
    speechbrain_slap.data.audio.AudioLoadError: b.flac: cannot decode audio (...)
    """
    return _decode(io.BytesIO(data), source, sample_rate)


def _decode(file, source: str, sample_rate: int) -> torch.Tensor:
    """Mono, checked, resampled waveform of a path or a file object libsndfile reads.

    The header is checked before anything is decoded: the sample rate and the
    decoded sizes (before and after resampling) are bounded.
    """
    try:
        with soundfile.SoundFile(file) as sound:
            check_header(sound.samplerate, sound.channels, sound.frames, sample_rate, source)
            audio = sound.read(dtype="float32", always_2d=True)
            rate = sound.samplerate
    except AudioLoadError:
        raise
    except Exception as error:  # libsndfile's errors, and TypeError for headerless files
        raise AudioLoadError(source, f"cannot decode audio ({error})") from None
    if audio.size == 0:
        raise AudioLoadError(source, "no audio samples")
    wav = check_waveform(torch.from_numpy(np.ascontiguousarray(audio.mean(axis=1))), source)
    return resample(wav, rate, sample_rate)


def check_header(rate: int, channels: int, frames: int, target: int, source: str) -> None:
    """Refuses a header whose decoding or resampling would need unbounded memory.

    Arguments
    ---------
    rate, channels, frames : int
        What the header says.
    target : int
        The rate the audio is resampled to.
    source : str
        Names the input in the error message.

    Raises
    ------
    AudioLoadError
        A rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` (a 1 Hz file of
        10 KB resampled to 16 kHz is a gigabyte), no channel, or more than
        ``MAX_DECODED_SAMPLES`` samples decoded or resampled.

    Example
    -------
    >>> check_header(44100, 2, 441000, 16000, "a.wav")
    >>> check_header(1, 1, 15000, 16000, "b.wav")
    Traceback (most recent call last):
    ...
    speechbrain_slap.data.audio.AudioLoadError: b.wav: sample rate 1 Hz outside [1000, 384000] Hz
    """
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioLoadError(
            source, f"sample rate {rate} Hz outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
        )
    if channels < 1:
        raise AudioLoadError(source, f"{channels} channels")
    decoded, resampled = frames * channels, math.ceil(frames * target / rate)
    if max(decoded, resampled) > MAX_DECODED_SAMPLES:
        raise AudioLoadError(
            source,
            f"{frames} frames x {channels} channels at {rate} Hz: more than "
            f"{MAX_DECODED_SAMPLES} samples to decode or resample",
        )


def probe_duration(path: str | Path) -> float:
    """Seconds of an audio file from its header (nothing is decoded).

    Arguments
    ---------
    path : str or Path
        The audio file.

    Returns
    -------
    float

    Raises
    ------
    AudioLoadError
        ``audio file missing``, ``unreadable audio (...)`` or ``empty audio``.

    Example
    -------
    >>> path = getfixture("tmp_path") / "half_second.wav"
    >>> soundfile.write(path, np.zeros(11025), 22050)
    >>> probe_duration(path)
    0.5
    """
    source = str(path)
    path = Path(path)
    if not path.is_file():
        raise AudioLoadError(source, "audio file missing")
    try:
        info = soundfile.info(os.fsencode(path))
    except (RuntimeError, ValueError, EOFError) as error:  # soundfile.LibsndfileError
        raise AudioLoadError(source, f"unreadable audio ({error})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioLoadError(source, "empty audio")
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioLoadError(
            source,
            f"sample rate {info.samplerate} Hz outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz",
        )
    return info.frames / info.samplerate


def probe_audio(path: str | Path) -> tuple[float | None, str | None]:
    """``probe_duration`` for callers that list unusable files instead of stopping.

    Arguments
    ---------
    path : str or Path
        As for ``probe_duration``.

    Returns
    -------
    (float, None) or (None, str)
        ``(seconds, None)``, or ``(None, reason)`` for a missing, unreadable
        or empty file.

    Example
    -------
    >>> probe_audio("/no/such/clip.wav")
    (None, 'audio file missing')
    """
    try:
        return probe_duration(path), None
    except AudioLoadError as error:
        return None, error.reason


# torchaudio's resampling kernel has (new / g) x (orig / g) taps, g = gcd of the rates:
# fine for the usual rates (44.1 kHz -> 16 kHz: 160 x 441), gigabytes for odd ones.
MAX_RESAMPLE_FACTOR = 1000


def resample(wav: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """Resamples a 1-D waveform from ``rate`` to ``target`` Hz.

    ``torchaudio.functional.resample`` (what training uses) when the reduced
    ratio is small; a polyphase filter (``scipy.signal.resample_poly``) for
    odd rates such as 44,101 Hz, whose torchaudio kernel would need gigabytes.

    Arguments
    ---------
    wav : torch.Tensor
        ``(n,)`` float32 waveform.
    rate, target : int
        Sample rates in Hz.

    Returns
    -------
    torch.Tensor
        ``(round(n * target / rate),)`` float32 waveform.

    Example
    -------
    >>> resample(torch.zeros(44101), 44101, 16000).shape
    torch.Size([16000])
    """
    if rate == target:
        return wav
    divisor = math.gcd(rate, target)
    up, down = target // divisor, rate // divisor
    if max(up, down) <= MAX_RESAMPLE_FACTOR:
        return torchaudio.functional.resample(wav, rate, target)
    from scipy.signal import resample_poly

    out = resample_poly(wav.double().numpy(), up, down)
    return torch.from_numpy(out).float()[: round(wav.numel() * target / rate)]


def audio_batches(
    paths: Iterable[str | Path],
    load: Callable[[str | Path], torch.Tensor],
    max_samples: float,
    on_error: Callable[[int, AudioLoadError], None] | None = None,
    max_files: int | None = None,
) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """Reads files in order and groups them by a budget of audio samples.

    A group closes before it would exceed ``max_samples`` (or hold more than
    ``max_files`` files), so at most the budget plus one file is in memory (a
    longer file is a group of its own).

    Arguments
    ---------
    paths : iterable of str or Path
        Audio files.
    load : callable
        ``load(path) -> (n,)`` waveform, raising ``AudioLoadError`` (e.g.
        ``SLAP.load_audio``).
    max_samples : float
        Samples per group.
    on_error : callable, optional
        ``on_error(index, error)`` for a file that raised ``AudioLoadError``;
        the file is left out. Without it the error propagates.
    max_files : int, optional
        Most files per group.

    Yields
    ------
    indices : list of int
        Position in ``paths`` of each waveform of the group.
    waveforms : list of torch.Tensor

    Example
    -------
    >>> load = lambda path: torch.zeros(int(path))
    >>> [indices for indices, _ in audio_batches(["3", "4", "9", "1"], load, 8)]
    [[0, 1], [2], [3]]
    >>> [indices for indices, _ in audio_batches(["1", "1", "1"], load, 8, max_files=2)]
    [[0, 1], [2]]
    """
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files must be >= 1, got {max_files}")
    indices, waveforms, used = [], [], 0
    for index, path in enumerate(paths):
        try:
            wav = load(path)
        except AudioLoadError as error:
            if on_error is None:
                raise
            on_error(index, error)
            continue
        full = max_files is not None and len(waveforms) >= max_files
        if waveforms and (full or used + wav.numel() > max_samples):
            yield indices, waveforms
            indices, waveforms, used = [], [], 0
        indices.append(index)
        waveforms.append(wav)
        used += wav.numel()
    if waveforms:
        yield indices, waveforms
