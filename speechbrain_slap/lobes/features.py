"""Log-mel features for SLAP: 16 kHz waveform -> normalised 64-bin log-mel.

The paper (Sec. 3.2) uses a 25 ms Hann window, a 10 ms hop and 64 mel bins.
SpeechBrain's ``Fbank`` is reused with its STFT swapped for a Hann-windowed one
(``Fbank`` itself hard-codes a Hamming window). Features are always computed in
fp32, even under autocast, and normalised with fixed statistics that live in
the hparams file so that training and inference agree. The dB floor is fixed
(-100 dB) rather than relative to each row's maximum, so a clip's features do
not depend on what it is batched with.

Frame count rule (``num_frames``): a waveform of ``n`` samples gives
``n // hop + 1`` frames (centred frames, SpeechBrain's default). Waveforms
shorter than one 16-frame patch are zero-padded up to one patch, so a clip of
any length yields at least one time patch and gives the same frames alone or
inside a padded batch.

Authors
 * speechbrain-slap contributors 2026
"""

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import STFT

# Number of mel frames in one time patch (patches are 16 frames x 16 mel bins).
PATCH_FRAMES = 16


def num_frames(num_samples: torch.Tensor | int, hop_samples: int = 160):
    """Number of STFT frames for a waveform of ``num_samples`` samples.

    Arguments
    ---------
    num_samples : int or torch.Tensor
        Waveform length(s) in samples.
    hop_samples : int
        STFT hop in samples (10 ms at 16 kHz = 160).

    Returns
    -------
    Number of centred frames, ``num_samples // hop_samples + 1``.

    Example
    -------
    >>> num_frames(16000)
    101
    """
    return num_samples // hop_samples + 1


class SLAPFbank(torch.nn.Module):
    """Waveform -> normalised log-mel filterbank, as in the SLAP paper.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the input waveforms (SLAP uses 16 kHz).
    n_mels : int
        Number of mel bins (64 in the paper; a multiple of 16).
    win_length : float
        Window length in milliseconds (25).
    hop_length : float
        Hop length in milliseconds (10).
    n_fft : int
        FFT size (400 = 25 ms at 16 kHz).
    mean : float
        Fixed mean subtracted from the log-mel (dB), kept in hparams.
    std : float
        Fixed standard deviation the log-mel is divided by, kept in hparams.

    Example
    -------
    >>> compute_features = SLAPFbank()
    >>> feats = compute_features(torch.randn(2, 16000))
    >>> feats.dtype
    torch.float32
    >>> feats.shape
    torch.Size([2, 101, 64])
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        win_length: float = 25,
        hop_length: float = 10,
        n_fft: int = 400,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        if n_mels % 16 != 0:
            raise ValueError(f"n_mels must be a multiple of 16 (patch size), got {n_mels}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.hop_samples = int(round(sample_rate * hop_length / 1000))
        self.mean = float(mean)
        self.std = float(std)
        self.fbank = Fbank(
            sample_rate=sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            win_length=win_length,
            hop_length=hop_length,
        )
        # Fbank builds a Hamming-window STFT; the paper specifies Hann.
        self.fbank.compute_STFT = STFT(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            window_fn=torch.hann_window,
        )
        # Filterbank floors each row at (row max - 80 dB), with the max taken
        # over padding frames too, so a clip's features would depend on the
        # batch it is in. A fixed floor (amin = 1e-10, i.e. -100 dB) does not.
        self.fbank.compute_fbanks.top_db = float("inf")

    @property
    def min_samples(self) -> int:
        """Shortest waveform that yields one full time patch of frames."""
        return (PATCH_FRAMES - 1) * self.hop_samples

    def forward(self, wavs: torch.Tensor) -> torch.Tensor:
        """Computes normalised log-mel features.

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms ``(batch, samples)`` at ``sample_rate``.

        Returns
        -------
        feats : torch.Tensor
            ``(batch, frames, n_mels)`` fp32 log-mel, ``frames = samples // hop + 1``
            (at least 16).
        """
        if wavs.dim() != 2:
            raise ValueError(
                f"expected waveforms of shape (batch, samples), got {tuple(wavs.shape)}"
            )
        if wavs.shape[1] < self.min_samples:
            wavs = torch.nn.functional.pad(wavs, (0, self.min_samples - wavs.shape[1]))
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            feats = self.fbank(wavs.float())
            return (feats - self.mean) / self.std


def pad_waveforms(waveforms: list[torch.Tensor], hop_samples: int = 160):
    """Pads 1-D waveforms into a batch whose length is a multiple of the hop.

    With the batch length a multiple of the hop, the relative lengths map back
    to each clip's exact frame count (``packing.frames_from_relative_lengths``),
    so a clip gives the same tokens alone or in any batch.

    Arguments
    ---------
    waveforms : list of torch.Tensor
        1-D waveforms (any lengths >= 1).
    hop_samples : int
        STFT hop in samples.

    Returns
    -------
    wavs : torch.Tensor
        ``(B, S)`` zero-padded batch, ``S`` a multiple of ``hop_samples``.
    wav_lens : torch.Tensor
        ``(B,)`` relative lengths ``n / S``.

    Example
    -------
    >>> wavs, wav_lens = pad_waveforms([torch.ones(16000), torch.ones(8001)])
    >>> wavs.shape, wav_lens
    (torch.Size([2, 16000]), tensor([1.0000, 0.5001]))
    """
    if not waveforms:
        raise ValueError("pad_waveforms needs at least one waveform")
    for i, wav in enumerate(waveforms):
        if wav.dim() != 1 or wav.numel() == 0:
            raise ValueError(f"waveform {i} must be 1-D and non-empty, got {tuple(wav.shape)}")
    wavs = torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True)
    wav_lens = torch.tensor([wav.numel() / wavs.shape[1] for wav in waveforms])
    return pad_to_hop(wavs, wav_lens, hop_samples)


def pad_to_hop(wavs: torch.Tensor, wav_lens: torch.Tensor, hop_samples: int = 160):
    """Zero-pads a waveform batch to a multiple of the hop and rescales ``wav_lens``.

    SpeechBrain's ``PaddedBatch`` pads to the longest clip; with this the
    relative lengths map back to exact frame counts.

    Arguments
    ---------
    wavs : torch.Tensor
        ``(B, S)`` waveforms.
    wav_lens : torch.Tensor
        ``(B,)`` lengths relative to ``S``.
    hop_samples : int
        STFT hop in samples.

    Returns
    -------
    The padded ``(B, S')`` batch and the lengths relative to ``S'``.

    Example
    -------
    >>> wavs, lens = pad_to_hop(torch.ones(2, 250), torch.tensor([1.0, 0.4]))
    >>> wavs.shape, lens
    (torch.Size([2, 320]), tensor([0.7812, 0.3125]))
    """
    total = wavs.shape[1]
    padded = -(-total // hop_samples) * hop_samples
    if padded == total:
        return wavs, wav_lens
    samples = torch.round(wav_lens.double() * total)
    wavs = torch.nn.functional.pad(wavs, (0, padded - total))
    return wavs, (samples / padded).to(wav_lens.dtype)
