"""SLAP as a SpeechBrain utterance classifier: embedder, linear head, identity normaliser.

These three modules fill the slots that SpeechBrain's
``speechbrain.inference.classifiers.EncoderClassifier`` calls::

    feats = compute_features(wavs)                 # SLAPFbank (fixed statistics)
    feats = mean_var_norm(feats, wav_lens)         # IdentityNormalization
    emb = embedding_model(feats, wav_lens)         # SLAPEmbedder -> (B, 1, D)
    scores = classifier(emb).squeeze(1)            # LinearClassifier -> (B, C)

so a fine-tuned SLAP tagging model loads with the stock class (paper Sec. 3.1:
a linear layer on the audio encoder, the whole encoder fine-tuned).

Authors
 * speechbrain-slap contributors 2026
"""

import torch
from torch import nn

from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
from speechbrain_slap.lobes.pooling import MAPooling

OUTPUTS = ("logits", "log_softmax", "sigmoid")


class SLAPEmbedder(nn.Module):
    """Audio encoder + MAP pooling: log-mels ``(B, T, n_mels)`` -> ``(B, 1, D)``.

    The batch is packed internally (``SLAPAudioEncoder.patchify``), so no
    compute is spent on padding and a clip gives the same embedding alone or in
    any batch. The output keeps a singleton time axis, as SpeechBrain's
    ``embedding_model`` (e.g. ECAPA-TDNN) does. The encoder's mask token serves
    masked pretraining only; it is frozen here, so that DDP does not wait for a
    gradient it never gets.

    Arguments
    ---------
    audio_encoder : SLAPAudioEncoder
        The (pretrained) audio encoder.
    audio_pooling : MAPooling
        The (pretrained) attention pooling over the encoder tokens.

    Example
    -------
    >>> encoder = SLAPAudioEncoder(embed_dim=32, depth=3, num_heads=2, mlp_hidden=64)
    >>> embedder = SLAPEmbedder(encoder, MAPooling(input_size=32, num_heads=2))
    >>> feats = torch.randn(2, 101, 64)   # 1 s of log-mel frames
    >>> embedder(feats, torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 1, 32])
    """

    def __init__(self, audio_encoder: SLAPAudioEncoder, audio_pooling: MAPooling):
        super().__init__()
        self.audio_encoder = audio_encoder
        self.audio_pooling = audio_pooling
        self.audio_encoder.mask_token.requires_grad_(False)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Embeds a padded log-mel batch.

        Arguments
        ---------
        feats : torch.Tensor
            ``(B, T, n_mels)`` normalised log-mel (``SLAPFbank`` output).
        lengths : torch.Tensor, optional
            ``(B,)`` relative lengths (``wav_lens``); None means all full.

        Returns
        -------
        ``(B, 1, D)`` clip embeddings (not L2-normalised).
        """
        packed = self.audio_encoder.patchify(feats, lengths)
        tokens = self.audio_encoder(packed)
        return self.audio_pooling(tokens, cu_seqlens=packed.cu_seqlens).unsqueeze(1)


class LinearClassifier(nn.Module):
    """One linear layer from clip embeddings to class scores.

    ``output`` picks what the scores are: ``logits`` (training: the losses take
    logits), ``log_softmax`` (single-label: log-posteriors, what
    ``EncoderClassifier.classify_batch`` documents) or ``sigmoid``
    (multi-label: independent per-class probabilities). It only changes the
    output mapping, not the parameters, so a head trained with ``logits`` is
    exported with another ``output`` unchanged.

    Arguments
    ---------
    input_size : int
        Embedding width ``D``.
    n_classes : int
        Number of classes ``C``.
    output : str
        ``logits``, ``log_softmax`` or ``sigmoid``.

    Example
    -------
    >>> head = LinearClassifier(input_size=32, n_classes=5, output="log_softmax")
    >>> scores = head(torch.randn(3, 32))
    >>> torch.allclose(scores.exp().sum(dim=-1), torch.ones(3))
    True
    >>> head(torch.randn(3, 1, 32)).shape
    torch.Size([3, 1, 5])
    """

    def __init__(self, input_size: int, n_classes: int, output: str = "logits"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        self.output = output
        self.linear = nn.Linear(input_size, n_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, 1, D)`` or ``(B, D)`` embeddings.

        Arguments
        ---------
        emb : torch.Tensor
            ``(B, 1, D)`` (``SLAPEmbedder`` output) or ``(B, D)``.

        Returns
        -------
        ``(B, 1, C)`` or ``(B, C)`` scores, as selected by ``output``.
        """
        if emb.dim() not in (2, 3) or emb.shape[-1] != self.linear.in_features:
            raise ValueError(
                f"expected embeddings (batch, {self.linear.in_features}) or "
                f"(batch, 1, {self.linear.in_features}), got {tuple(emb.shape)}"
            )
        logits = self.linear(emb)
        if self.output == "log_softmax":
            return torch.log_softmax(logits.float(), dim=-1)
        if self.output == "sigmoid":
            return torch.sigmoid(logits.float())
        return logits


class IdentityNormalization(nn.Module):
    """The ``mean_var_norm`` slot of ``EncoderClassifier``, doing nothing.

    ``SLAPFbank`` already normalises with fixed statistics stored in the
    hparams, so per-utterance normalisation would only change the features the
    encoder was trained on.

    Example
    -------
    >>> feats = torch.randn(2, 101, 64)
    >>> IdentityNormalization()(feats, torch.ones(2)).shape
    torch.Size([2, 101, 64])
    """

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Returns ``feats`` unchanged (``lengths`` keeps the SpeechBrain signature)."""
        return feats
