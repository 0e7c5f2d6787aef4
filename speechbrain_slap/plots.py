"""Figures written by the recipes and evaluations: training curves, similarities, confusions.

The one module that imports matplotlib (with its file-only ``Agg`` backend).

Authors
 * speechbrain-slap contributors 2026
"""

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

# Count annotations in the confusion-matrix cells stay readable up to this many classes.
MAX_ANNOTATED_CLASSES = 16
RETRIEVAL_CURVES = tuple(
    f"{split}_{key}"
    for split in ("valid", "train")
    for key in ("t2a_R@1", "a2t_R@1", "zeroshot_accuracy", "zeroshot_onset_accuracy")
)


def plot_training_curves(
    steps_jsonl: str | Path, output_png: str | Path, epochs_jsonl: str | Path | None = None
) -> Path:
    """Plots every logged loss, R@1 per epoch, logit scale, LR, EMA momentum and tokens/s.

    The retrieval panel shows the epoch records of ``epochs_jsonl``
    (``valid_*`` and, with a train monitor, ``train_*`` t2a/a2t R@1 and
    zero-shot accuracy) at the optimizer step where each epoch ended.

    Arguments
    ---------
    steps_jsonl : path
        One JSON record per logged step (``SLAPBrain`` writes ``train_steps.jsonl``).
    output_png : path
        Where to write the figure.
    epochs_jsonl : path, optional
        One JSON record per epoch (``train_epochs.jsonl``).

    Returns
    -------
    The PNG path.
    """
    steps_jsonl, output_png = Path(steps_jsonl), Path(output_png)
    records = _read_jsonl(steps_jsonl) + (_read_jsonl(Path(epochs_jsonl)) if epochs_jsonl else [])
    panels = [
        ("losses", [k for k in ("loss", "loss_clap", "loss_ssl", "loss_cap") if _has(records, k)]),
        ("retrieval per epoch", [k for k in RETRIEVAL_CURVES if _has(records, k)]),
        ("logit scale", ["logit_scale"]),
        ("learning rate", ["lr"]),
        ("EMA momentum", ["ema_momentum"]),
        ("real tokens / s", ["tokens_per_s"]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                style = {"marker": "o"} if key in RETRIEVAL_CURVES else {}
                ax.plot(*zip(*points, strict=True), label=key, **style)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if len(keys) > 1:
            ax.legend(fontsize=8)
    if not records:
        fig.suptitle(f"no steps logged in {steps_jsonl.name}")
    fig.tight_layout()
    fig.savefig(output_png, dpi=100)
    plt.close(fig)
    return output_png


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as fin:
        return [json.loads(line) for line in fin if line.strip()]


def _has(records, key):
    return any(r.get(key) is not None for r in records)


def plot_similarity(
    similarity: torch.Tensor, text_to_audio, output_png: str | Path, max_items: int = 100
) -> Path:
    """Heat map of text-audio cosine similarities: each audio against its first caption.

    Row ``i`` is the first caption of audio ``i``, so matching pairs lie on the
    diagonal; a good model shows a bright diagonal.

    Arguments
    ---------
    similarity : torch.Tensor
        ``(n_texts, n_audios)`` similarities.
    text_to_audio : sequence of int
        Audio index of each text.
    output_png : path
        Where to write the figure.
    max_items : int
        Shows at most this many audios (the first ones).

    Returns
    -------
    The PNG path.
    """
    text_to_audio = torch.as_tensor(text_to_audio)
    n_audio = min(similarity.shape[1], max_items)
    first_caption = {}
    for text, audio in enumerate(text_to_audio.tolist()):
        first_caption.setdefault(audio, text)
    audios = [a for a in range(n_audio) if a in first_caption]
    matrix = similarity[[first_caption[a] for a in audios]][:, audios].float().numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, interpolation="nearest", cmap="viridis")
    ax.set_xlabel("audio")
    ax.set_ylabel("first caption of audio")
    ax.set_title(f"text-audio cosine similarity, first {len(audios)} test clips")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(output_png, dpi=100)
    plt.close(fig)
    return Path(output_png)


def plot_confusion_matrix(
    matrix: torch.Tensor | Sequence[Sequence[int]],
    class_names: Sequence[str],
    output_png: str | Path,
    title: str = "",
) -> Path:
    """Heat map of a confusion matrix of counts (row = true class, column = prediction).

    Cells are coloured by the share of the true class's clips, so classes of
    different sizes read alike; up to ``MAX_ANNOTATED_CLASSES`` classes the
    counts are written in the cells.

    Arguments
    ---------
    matrix : torch.Tensor or nested sequence
        ``(C, C)`` counts.
    class_names : sequence of str
        ``C`` names, in class-index order.
    output_png : str or Path
        Where to write the figure.
    title : str
        Figure title.

    Returns
    -------
    Path
        The PNG path.

    Example
    -------
    >>> import tempfile
    >>> png = Path(tempfile.mkdtemp()) / "confusion.png"
    >>> plot_confusion_matrix([[3, 1], [0, 4]], ["dog", "cat"], png).read_bytes()[1:4]
    b'PNG'
    """
    counts = torch.as_tensor(matrix, dtype=torch.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix must be ({n}, {n}) for {n} class names, got {counts.shape}")
    shares = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(5.0, 0.28 * n + 3.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(shares.numpy(), interpolation="nearest", cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=color)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(output_png, dpi=100)
    plt.close(fig)
    return Path(output_png)
