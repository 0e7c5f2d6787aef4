"""Dense-feature probe: what a linear classifier reads from frozen frame features.

The paper adds the SSL and captioning losses so that the encoder's dense
(per-patch) features, not only the pooled embedding, carry what is heard. This
module measures that: a multinomial logistic regression is trained on the
frozen time-step features of training clips (``time_step_features``: one row
per 160 ms step, the mean of its four frequency tokens, as
``SLAPFrameEncoder`` and ``SLAP.frame_embeddings`` give them) to predict a
label per step, here which sound type (or none) is sounding, and it is scored
on the steps of held-out clips. The share of the most frequent class is
reported beside the accuracy: predicting it everywhere scores that much.

Authors
 * speechbrain-slap contributors 2026
"""

from collections.abc import Sequence

import torch

from speechbrain_slap.lobes.features import pad_waveforms
from speechbrain_slap.lobes.frame_encoder import time_step_features


@torch.no_grad()
def frame_features(
    compute_features: torch.nn.Module,
    encoder: torch.nn.Module,
    waveforms: Sequence[torch.Tensor],
    batch_seconds: float = 120.0,
    sample_rate: int = 16000,
) -> list[torch.Tensor]:
    """Frozen time-step features of each waveform, packed in batches of ``batch_seconds``.

    Arguments
    ---------
    compute_features : torch.nn.Module
        Waveforms -> log-mel features (``SLAPFbank``).
    encoder : torch.nn.Module
        A ``SLAPAudioEncoder`` (run in eval mode, restored afterwards).
    waveforms : sequence of torch.Tensor
        1-D waveforms at ``sample_rate``.
    batch_seconds : float
        Audio per packed forward.
    sample_rate : int
        Rate of the waveforms.

    Returns
    -------
    list of torch.Tensor
        ``(T_i, D)`` per clip, on the CPU, in input order.

    Example
    -------
    >>> from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
    >>> from speechbrain_slap.lobes.features import SLAPFbank
    >>> encoder = SLAPAudioEncoder(embed_dim=32, depth=3, num_heads=4, mlp_hidden=64)
    >>> feats = frame_features(SLAPFbank(), encoder, [torch.randn(16000), torch.randn(8000)])
    >>> [tuple(f.shape) for f in feats]
    [(6, 32), (3, 32)]
    """
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out, start, used = [], 0, 0
    budget = batch_seconds * sample_rate
    hop = getattr(compute_features, "hop_samples", 160)

    def flush(chunk):
        wavs, wav_lens = pad_waveforms(list(chunk), hop)
        feats = compute_features(wavs.to(device))
        packed = encoder.patchify(feats, wav_lens.to(device))
        frames, mask = time_step_features(encoder(packed), packed)
        out.extend(f[m].float().cpu() for f, m in zip(frames, mask, strict=True))

    for i, wav in enumerate(waveforms):
        if i > start and used + wav.numel() > budget:
            flush(waveforms[start:i])
            start, used = i, 0
        used += wav.numel()
    if start < len(waveforms):
        flush(waveforms[start:])
    encoder.train(was_training)
    return out


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    n_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> dict:
    """Fits a multinomial logistic regression on ``train`` and scores it on ``test``.

    Features are standardised with the training statistics; the weights are
    fit by L-BFGS on the full training set (cross-entropy plus
    ``weight_decay`` times the squared weights), so the result is
    deterministic.

    Arguments
    ---------
    train_x, test_x : torch.Tensor
        ``(N, D)`` features.
    train_y, test_y : torch.Tensor
        ``(N,)`` integer labels in ``[0, n_classes)``.
    n_classes : int
        Number of classes.
    weight_decay : float
        L2 penalty on the weights.
    max_iter : int
        L-BFGS iterations.

    Returns
    -------
    dict
        ``accuracy`` on test, ``majority`` (share of the most frequent test
        class), ``train_accuracy``, ``n_train``, ``n_test``.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 4, generator=g)
    >>> y = (x[:, 0] > 0).long()
    >>> result = linear_probe(x[:150], y[:150], x[150:], y[150:], n_classes=2)
    >>> result["accuracy"] > 0.9, result["n_test"]
    (True, 50)
    """
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.dim() != 2 or y.shape != x.shape[:1] or x.shape[0] == 0:
            raise ValueError(
                f"{name}: expected (N, D) features and (N,) labels with N > 0, "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    linear = torch.nn.Linear(train_x.shape[1], n_classes).double()
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe"
    )
    x, y = train_x.double(), train_y.long()

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y)
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        train_accuracy = float((linear(x).argmax(1) == y).double().mean())
        predicted = linear(test_x.double()).argmax(1)
    counts = torch.bincount(test_y.long(), minlength=n_classes)
    return {
        "accuracy": float((predicted == test_y.long()).double().mean()),
        "majority": float(counts.max()) / len(test_y),
        "train_accuracy": train_accuracy,
        "n_train": len(train_y),
        "n_test": len(test_y),
    }
