"""Audio tagging fine-tuning: a linear layer on the SLAP audio encoder (paper Sec. 3.1).

"We attach a linear classification layer to the audio encoder of the
pretrained SLAP model and fine-tune the entire audio encoder on each target
dataset. For AudioSet, we follow the fine-tuning protocol from AudioMAE,
incorporating balanced sampling, mixup, and cyclic rolling augmentation."

One training step of ``TaggingBrain``::

    wavs -> [cyclic roll -> mixup]                   (augment_on: waveform, default)
         -> log-mel -> [cyclic roll -> mixup]        (augment_on: features)
         -> SpecAugment (optional) -> SLAPEmbedder (packed) -> LinearClassifier
    loss: BCE with logits (multi-label) or cross-entropy with label smoothing

Augmentations (training only):

* **Cyclic rolling** (``cyclic_roll``): each clip is shifted circularly in time
  by a random offset drawn uniformly in ``[0, n)``, where ``n`` is the clip's
  own real length (samples or frames), so the audio wraps around inside the
  clip and padding stays padding.
* **Mixup** (``mixup``): each clip ``i`` is mixed with a partner ``j`` (a
  random permutation of the batch) with a weight ``lam_i ~ Beta(alpha,
  alpha)``: ``x_i <- lam_i x_i + (1 - lam_i) x_j`` and the targets alike. Clips
  of different lengths mix as if the shorter one were followed by silence
  (padding is zero on waveforms, the features of zeros on log-mels): the mixed
  clip's length is the longer of the two, and the shorter clip's sound is heard
  only over its own duration. Mixing waveforms (the default, as AST and
  AudioMAE do) mixes the sounds; mixing log-mels interpolates spectrograms.

Validation reports macro mAP (multi-label) or accuracy (single-label); the
checkpoint with the best value is kept (``select_best: True``) or the last one
(``select_best: False``, for protocols without a validation split, where the
held-out split is only monitored). The test stage writes
``<output_folder>/test_results.json``.

``export_tagging_model`` writes a folder that SpeechBrain's stock
``speechbrain.inference.classifiers.EncoderClassifier.from_hparams`` loads.

Authors
 * speechbrain-slap contributors 2026
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_slap.export import verify_checksums, write_checksums
from speechbrain_slap.lobes.features import pad_to_hop
from speechbrain_slap.lobes.packing import frames_from_relative_lengths
from speechbrain_slap.metrics import accuracy, macro_average_precision

logger = logging.getLogger(__name__)

AUGMENT_DOMAINS = ("waveform", "features")


# -- augmentations -----------------------------------------------------------------
def random_shifts(lengths: torch.Tensor, generator: torch.Generator | None = None):
    """Uniform random shifts in ``[0, lengths[b])`` for each clip.

    Arguments
    ---------
    lengths : torch.Tensor
        ``(B,)`` real length of each clip (samples or frames), each >= 1.
    generator : torch.Generator, optional
        Random generator on the device of ``lengths``.

    Returns
    -------
    ``(B,)`` long tensor of shifts.

    Example
    -------
    >>> shifts = random_shifts(torch.tensor([1, 5, 100]))
    >>> bool(shifts[0] == 0), bool((shifts < torch.tensor([1, 5, 100])).all())
    (True, True)
    >>> shifts.shape
    torch.Size([3])
    """
    lengths = lengths.long()
    draws = torch.rand(lengths.shape, generator=generator, device=lengths.device)
    return torch.minimum((draws * lengths).long(), lengths - 1)


def cyclic_roll(x: torch.Tensor, lengths: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rolls each clip circularly in time within its own real length.

    ``out[b, t] = x[b, (t - shifts[b]) mod lengths[b]]`` for ``t < lengths[b]``
    (``torch.roll`` of the clip's real part); rows past a clip's end are
    copied unchanged.

    Arguments
    ---------
    x : torch.Tensor
        ``(B, T, ...)`` waveforms ``(B, S)`` or features ``(B, T, n_mels)``.
    lengths : torch.Tensor
        ``(B,)`` real length of each clip along dim 1, in ``[1, T]``.
    shifts : torch.Tensor
        ``(B,)`` integer shifts (any sign; taken modulo the clip's length).

    Returns
    -------
    The rolled batch, same shape as ``x``.

    Example
    -------
    >>> x = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    >>> cyclic_roll(x, torch.tensor([3, 4]), torch.tensor([1, 2]))
    tensor([[3., 1., 2., 0.],
            [3., 4., 1., 2.]])
    >>> cyclic_roll(torch.randn(2, 101, 64), torch.tensor([101, 50]), torch.tensor([7, 3])).shape
    torch.Size([2, 101, 64])
    """
    batch, total = x.shape[:2]
    lengths = lengths.to(device=x.device, dtype=torch.long)
    if lengths.shape != (batch,) or bool((lengths < 1).any() | (lengths > total).any()):
        raise ValueError(
            f"lengths must be (batch,) = ({batch},) with values in [1, {total}], "
            f"got {lengths.tolist()}"
        )
    if shifts.shape != (batch,):
        raise ValueError(f"shifts must have shape ({batch},), got {tuple(shifts.shape)}")
    time = torch.arange(total, device=x.device)[None, :]
    n = lengths[:, None]
    shift = shifts.to(device=x.device, dtype=torch.long)[:, None] % n
    source = torch.where(time < n, (time - shift) % n, time)
    index = source.view(batch, total, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def sample_mixup(batch_size: int, alpha: float, device: torch.device | str = "cpu"):
    """Draws mixup weights ``lam ~ Beta(alpha, alpha)`` and a partner for each clip.

    Arguments
    ---------
    batch_size : int
        Number of clips ``B``.
    alpha : float
        Beta concentration (> 0); small values give weights near 0 or 1.
    device : torch.device or str
        Device of the returned tensors.

    Returns
    -------
    weights : torch.Tensor
        ``(B,)`` weights in ``[0, 1]`` of each clip itself.
    partners : torch.Tensor
        ``(B,)`` a random permutation: clip ``i`` is mixed with ``partners[i]``.

    Example
    -------
    >>> weights, partners = sample_mixup(4, alpha=0.5)
    >>> sorted(partners.tolist()), bool(((weights >= 0) & (weights <= 1)).all())
    ([0, 1, 2, 3], True)
    >>> weights.shape
    torch.Size([4])
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    weights = beta.sample((batch_size,)).to(device)
    return weights, torch.randperm(batch_size, device=device)


def mixup(
    x: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor,
    weights: torch.Tensor,
    partners: torch.Tensor,
):
    """Mixes each clip and its targets with a partner clip of the batch.

    ``x_i <- w_i x_i + (1 - w_i) x_p``, ``y_i <- w_i y_i + (1 - w_i) y_p`` with
    ``p = partners[i]``. Padding is treated as silence, so the mixed clip's
    relative length is the longer of the two (see the module docstring).

    Arguments
    ---------
    x : torch.Tensor
        ``(B, T, ...)`` padded waveforms or features.
    targets : torch.Tensor
        ``(B, C)`` multi-hot or one-hot (possibly soft) targets.
    lengths : torch.Tensor
        ``(B,)`` relative lengths.
    weights : torch.Tensor
        ``(B,)`` mixing weight of each clip itself, in ``[0, 1]``.
    partners : torch.Tensor
        ``(B,)`` index of each clip's partner.

    Returns
    -------
    The mixed ``x``, ``targets`` and ``lengths``.

    Example
    -------
    >>> x = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> mixed, y_mixed, lens = mixup(
    ...     x, y, torch.tensor([2 / 3, 1.0]), torch.tensor([0.75, 1.0]), torch.tensor([1, 0])
    ... )
    >>> mixed
    tensor([[1.2500, 1.2500, 0.5000],
            [2.0000, 2.0000, 2.0000]])
    >>> y_mixed
    tensor([[0.7500, 0.2500],
            [0.0000, 1.0000]])
    >>> lens
    tensor([1., 1.])
    >>> mixed.shape
    torch.Size([2, 3])
    """
    batch = x.shape[0]
    for name, value in (("weights", weights), ("partners", partners), ("lengths", lengths)):
        if value.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(value.shape)}")
    if targets.dim() != 2 or targets.shape[0] != batch:
        raise ValueError(f"targets must be (batch={batch}, classes), got {tuple(targets.shape)}")
    w = weights.to(x.dtype).view(batch, *([1] * (x.dim() - 1)))
    mixed = w * x + (1 - w) * x[partners]
    w = weights.to(targets.dtype)[:, None]
    mixed_targets = w * targets + (1 - w) * targets[partners]
    return mixed, mixed_targets, torch.maximum(lengths, lengths[partners])


def balanced_sample_weights(label_indices: Sequence[Sequence[int]], n_classes: int):
    """Per-clip sampling weights that balance the classes (AudioMAE / PANNs style).

    A clip's weight is the sum over its labels of ``1 / count(label)``, with
    ``count`` the number of training clips carrying the label, so every class
    is drawn about equally often in expectation. A clip without labels gets
    weight 0 (it is never drawn).

    Arguments
    ---------
    label_indices : sequence of sequences of int
        Class indices of each clip.
    n_classes : int
        Number of classes.

    Returns
    -------
    ``(N,)`` float64 weights, for e.g. SpeechBrain's ``ReproducibleWeightedRandomSampler``.

    Example
    -------
    >>> balanced_sample_weights([[0], [0], [0, 1], [2]], n_classes=3)
    tensor([0.3333, 0.3333, 1.3333, 1.0000], dtype=torch.float64)
    """
    counts = torch.zeros(n_classes, dtype=torch.float64)
    for index, labels in enumerate(label_indices):
        for label in labels:
            if not 0 <= label < n_classes:
                raise ValueError(f"clip {index}: label index {label} not in [0, {n_classes})")
            counts[label] += 1
    inverse = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return torch.tensor(
        [float(inverse[list(labels)].sum()) if labels else 0.0 for labels in label_indices],
        dtype=torch.float64,
    )


# -- the Brain --------------------------------------------------------------------
class TaggingBrain(sb.Brain):
    """Fine-tunes SLAP with a linear head for single- or multi-label tagging.

    Expected ``modules``: ``compute_features`` (``SLAPFbank``),
    ``embedding_model`` (``SLAPEmbedder``), ``classifier``
    (``LinearClassifier`` with ``output: logits``). Expected hparams:
    ``multilabel`` (bool), ``mixup_alpha`` (0 disables mixup),
    ``cyclic_roll`` (bool), ``augment_on`` (``waveform`` or ``features``),
    ``spec_augment`` (list of modules, or empty), ``label_smoothing``
    (single-label only), ``lr_schedule`` (``WarmupCosineLR``),
    ``select_best``, ``train_logger``, ``output_folder``. Batches carry ``sig``
    (waveforms) and ``targets`` (``(C,)`` multi-hot or one-hot per clip).
    """

    @property
    def metric_name(self) -> str:
        """``mAP`` for multi-label tagging, ``accuracy`` for single-label."""
        return "mAP" if self.hparams.multilabel else "accuracy"

    def compute_forward(self, batch, stage):
        """Augments (training), embeds and scores a batch; returns logits and targets."""
        batch = batch.to(self.device)
        wavs, wav_lens = pad_to_hop(*batch.sig)
        targets = batch.targets.data.float()
        train = stage == sb.Stage.TRAIN
        if train and self.hparams.augment_on == "waveform":
            samples = torch.round(wav_lens * wavs.shape[1]).long().clamp(min=1)
            wavs, targets, wav_lens = self._roll_and_mix(wavs, targets, wav_lens, samples)
        feats = self.modules.compute_features(wavs)
        if train and self.hparams.augment_on == "features":
            frames = frames_from_relative_lengths(wav_lens, feats.shape[1])
            feats, targets, wav_lens = self._roll_and_mix(feats, targets, wav_lens, frames)
        if train:
            for augment in self.hparams.spec_augment or []:
                feats = augment(feats)
        emb = self.modules.embedding_model(feats, wav_lens)
        logits = self.modules.classifier(emb).squeeze(1)
        return logits, targets

    def _roll_and_mix(self, x, targets, wav_lens, valid):
        if self.hparams.cyclic_roll:
            x = cyclic_roll(x, valid, random_shifts(valid))
        if self.hparams.mixup_alpha > 0:
            weights, partners = sample_mixup(x.shape[0], self.hparams.mixup_alpha, x.device)
            x, targets, wav_lens = mixup(x, targets, wav_lens, weights, partners)
        return x, targets, wav_lens

    def compute_objectives(self, predictions, batch, stage):
        """BCE with logits (multi-label) or cross-entropy; collects scores off training."""
        logits, targets = predictions
        logits = logits.float()
        if self.hparams.multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
            scores = torch.sigmoid(logits)
        else:
            loss = torch.nn.functional.cross_entropy(
                logits, targets, label_smoothing=self.hparams.label_smoothing
            )
            scores = torch.softmax(logits, dim=-1)
        if stage != sb.Stage.TRAIN:
            self.eval_scores.append(scores.detach().cpu())
            self.eval_targets.append(targets.cpu())
        return loss

    def on_fit_start(self):
        """Checks the augmentation settings, then SpeechBrain's fit start (recovery)."""
        if self.hparams.augment_on not in AUGMENT_DOMAINS:
            raise ValueError(
                f"augment_on must be one of {AUGMENT_DOMAINS}, got {self.hparams.augment_on!r}"
            )
        super().on_fit_start()

    def on_fit_batch_start(self, batch, should_step):
        """Sets the learning rate of the coming optimizer step."""
        if should_step:
            self.current_lr = self.hparams.lr_schedule(self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        """Resets the collected scores of an evaluation stage."""
        self.eval_scores, self.eval_targets = [], []

    def evaluation_metrics(self) -> dict:
        """Macro mAP or accuracy over the clips of the finished evaluation stage."""
        scores, targets = torch.cat(self.eval_scores), torch.cat(self.eval_targets)
        if self.hparams.multilabel:
            value = macro_average_precision(scores, targets)
        else:
            value = accuracy(scores.argmax(dim=-1), targets.argmax(dim=-1))
        return {self.metric_name: float(value), "n_clips": scores.shape[0]}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, keeps the best (or last) checkpoint, writes ``test_results.json``."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": stage_loss, **self.evaluation_metrics()}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": getattr(self, "current_lr", None)},
                train_stats=getattr(self, "train_stats", None),
                valid_stats=stats,
            )
            best = [self.metric_name] if self.hparams.select_best else []
            self.checkpointer.save_and_keep_only(
                meta={self.metric_name: stats[self.metric_name]}, max_keys=best
            )
            return
        self.hparams.train_logger.log_stats(
            stats_meta={"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
        )
        self.test_stats = {"metric": self.metric_name, **stats}
        if sb.utils.distributed.if_main_process():
            path = Path(self.hparams.output_folder) / "test_results.json"
            path.write_text(json.dumps(self.test_stats, indent=2) + "\n")
            logger.info("test results written to %s", path)


# -- loading and export ----------------------------------------------------------
def load_state_dict_strict(module: torch.nn.Module, path: str | Path) -> None:
    """Loads a ``torch.save``-d state dict into ``module``, every key required.

    SpeechBrain's default parameter transfer is non-strict: a model folder whose
    keys do not match would leave the encoder at its random initialisation with
    only a logged warning. Use this as a ``Pretrainer`` custom hook.

    Arguments
    ---------
    module : torch.nn.Module
        Module to load into.
    path : str or Path
        State-dict file.

    Example
    -------
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/linear.ckpt"
    >>> torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    >>> module = torch.nn.Linear(2, 3)
    >>> load_state_dict_strict(module, path)
    >>> module.weight.shape
    torch.Size([3, 2])
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f"{path} does not match {type(module).__name__}: {error}") from None


def load_pretrained_slap(pretrainer, model_folder: str | Path | None) -> bool:
    """Loads the pretrained parts of a SLAP model folder with SpeechBrain's ``Pretrainer``.

    Arguments
    ---------
    pretrainer : speechbrain.utils.parameter_transfer.Pretrainer
        Its ``paths`` point into ``model_folder`` (e.g. ``audio_encoder.ckpt``,
        ``audio_pooling.ckpt``).
    model_folder : str, Path or None
        The SLAP model folder (the recipe's ``pretrained_model``); None or empty
        trains from scratch.

    Returns
    -------
    bool
        True if weights were loaded, False when training from scratch.
    """
    if not model_folder:
        logger.info("pretrained_model is empty: training from scratch")
        return False
    missing = [str(path) for path in pretrainer.paths.values() if not Path(str(path)).is_file()]
    if missing:
        raise FileNotFoundError(
            f"pretrained_model {model_folder}: missing {missing}; expected a SLAP model "
            "folder (audio_encoder.ckpt, audio_pooling.ckpt, ... as `slap export` writes)"
        )
    verify_checksums(model_folder)
    sb.utils.distributed.run_on_main(pretrainer.collect_files)
    pretrainer.load_collected()
    logger.info("loaded %s from %s", ", ".join(pretrainer.loadables), model_folder)
    return True


def make_label_encoder(labels: Sequence[str], n_classes: int, source: str) -> CategoricalEncoder:
    """A ``CategoricalEncoder`` with ``labels[i]`` at index ``i``, checked against ``n_classes``.

    Arguments
    ---------
    labels : sequence of str
        Class names in class-index order.
    n_classes : int
        The yaml's ``n_classes`` (the classifier's output size).
    source : str
        Where the labels come from, for error messages.

    Returns
    -------
    CategoricalEncoder

    Example
    -------
    >>> encoder = make_label_encoder(["dog", "rain"], 2, "toy")
    >>> encoder.encode_label("rain"), encoder.decode_ndim(0)
    (1, 'dog')
    """
    labels = list(labels)
    if len(labels) != n_classes:
        raise ValueError(
            f"{source} has {len(labels)} classes but n_classes is {n_classes} "
            f"(override with --n_classes={len(labels)})"
        )
    if len(set(labels)) != len(labels):
        raise ValueError(f"{source}: class names are not unique")
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(labels)
    encoder.expect_len(n_classes)
    return encoder


# Scalars of the tagging yaml that define the exported model's architecture.
ARCHITECTURE_KEYS = (
    "sample_rate",
    "n_mels",
    "feature_mean",
    "feature_std",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_hidden",
    "local_window",
    "local_attention",
)

# Files of an exported folder that SHA256SUMS covers.
CHECKSUMMED_FILES = (
    "hyperparams.yaml",
    "embedding_model.ckpt",
    "classifier.ckpt",
    "label_encoder.ckpt",
)

_EXPORT_YAML = """\
# ############################################################################
# {title}
# SLAP audio encoder + MAP pooling + linear layer, loadable with SpeechBrain's
# speechbrain.inference.classifiers.EncoderClassifier.from_hparams.
# Written by speechbrain_slap.tagging.export_tagging_model.
# ############################################################################

{scalars}

compute_features: !new:speechbrain_slap.lobes.features.SLAPFbank
    sample_rate: !ref <sample_rate>
    n_mels: !ref <n_mels>
    mean: !ref <feature_mean>
    std: !ref <feature_std>

# SLAPFbank normalises with fixed statistics already.
mean_var_norm: !new:speechbrain_slap.lobes.classifier.IdentityNormalization

audio_encoder: !new:speechbrain_slap.lobes.audio_encoder.SLAPAudioEncoder
    n_mels: !ref <n_mels>
    embed_dim: !ref <embed_dim>
    depth: !ref <depth>
    num_heads: !ref <num_heads>
    mlp_hidden: !ref <mlp_hidden>
    local_window: !ref <local_window>
    local_attention: !ref <local_attention>
    attention_backend: auto

audio_pooling: !new:speechbrain_slap.lobes.pooling.MAPooling
    input_size: !ref <embed_dim>
    num_heads: !ref <num_heads>

embedding_model: !new:speechbrain_slap.lobes.classifier.SLAPEmbedder
    audio_encoder: !ref <audio_encoder>
    audio_pooling: !ref <audio_pooling>

# {output_comment}
classifier: !new:speechbrain_slap.lobes.classifier.LinearClassifier
    input_size: !ref <embed_dim>
    n_classes: !ref <n_classes>
    output: !ref <classifier_output>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer
    sample_rate: !ref <sample_rate>

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    classifier: !ref <classifier>

# Every file is <key>.ckpt next to this file (the default source of from_hparams),
# so the folder can be moved or uploaded as it is.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
"""


def export_tagging_model(
    hparams: dict,
    label_encoder: CategoricalEncoder,
    out_dir: str | Path,
    title: str = "SLAP audio tagging model",
    metrics: dict | None = None,
) -> Path:
    """Writes a tagging model folder that ``EncoderClassifier.from_hparams`` loads.

    The folder holds ``hyperparams.yaml`` (keys ``compute_features``,
    ``mean_var_norm``, ``embedding_model``, ``classifier``, ``label_encoder``,
    ``modules``, ``pretrainer``), ``embedding_model.ckpt`` and
    ``classifier.ckpt`` (CPU state dicts), ``label_encoder.ckpt``
    (``CategoricalEncoder`` text format), ``SHA256SUMS`` and a
    ``README.md`` model card. The classifier outputs log-posteriors
    (``log_softmax``) for single-label models and per-class probabilities
    (``sigmoid``) for multi-label ones. Before returning, the folder is
    rebuilt from its own yaml, every weight loaded strictly, and its scores on
    a test signal compared with the given modules.

    Every file is named ``<loadable>.ckpt``, the name ``from_hparams`` looks
    for in ``source`` when the pretrainer gives no path, so the folder loads
    from wherever it is moved or uploaded (a ``label_encoder.txt`` would need
    an absolute path in the yaml).

    Arguments
    ---------
    hparams : dict
        The tagging recipe's hparams: ``compute_features`` (``SLAPFbank``),
        ``embedding_model`` (``SLAPEmbedder``), ``classifier``
        (``LinearClassifier``), ``multilabel`` and the architecture scalars
        ``ARCHITECTURE_KEYS`` that built them.
    label_encoder : CategoricalEncoder
        Class index <-> label, one label per classifier output.
    out_dir : str or Path
        Folder to write (created; existing files are overwritten).
    title : str
        First line of the model card.
    metrics : dict, optional
        Test metrics to list in the model card (e.g. ``test_results.json``).

    Returns
    -------
    The folder path.
    """
    from hyperpyyaml import load_hyperpyyaml

    required = (
        *ARCHITECTURE_KEYS,
        "multilabel",
        "compute_features",
        "embedding_model",
        "classifier",
    )
    missing = [key for key in required if key not in hparams]
    if missing:
        raise KeyError(f"export_tagging_model: hparams lack {missing}")
    embedder, classifier = hparams["embedding_model"], hparams["classifier"]
    n_classes = classifier.linear.out_features
    if len(label_encoder) != n_classes:
        raise ValueError(
            f"label_encoder has {len(label_encoder)} labels but the classifier has "
            f"{n_classes} outputs"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    output = "sigmoid" if hparams["multilabel"] else "log_softmax"
    scalars = {key: hparams[key] for key in ARCHITECTURE_KEYS}
    scalars.update(n_classes=n_classes, classifier_output=output)
    comment = (
        "sigmoid: independent per-class probabilities (multi-label)"
        if hparams["multilabel"]
        else "log_softmax: log-posteriors over the classes (single-label)"
    )
    (out / "hyperparams.yaml").write_text(
        _EXPORT_YAML.format(
            title=title,
            scalars="\n".join(f"{k}: {json.dumps(v)}" for k, v in scalars.items()),
            output_comment=comment,
        )
    )
    for name, module in (("embedding_model", embedder), ("classifier", classifier)):
        torch.save({k: v.cpu() for k, v in module.state_dict().items()}, out / f"{name}.ckpt")
    label_encoder.save(out / "label_encoder.ckpt")

    # Self-check: the folder rebuilds the same model.
    with open(out / "hyperparams.yaml") as fin:
        rebuilt = load_hyperpyyaml(fin)
    for key in ("embedding_model", "classifier"):
        load_state_dict_strict(rebuilt[key], out / f"{key}.ckpt")
    _check_same_scores(hparams, rebuilt)

    write_checksums(out, list(CHECKSUMMED_FILES))
    (out / "README.md").write_text(
        _model_card(title, scalars, label_encoder, hparams["multilabel"], metrics)
    )
    logger.info("tagging model exported to %s", out)
    return out


@torch.no_grad()
def _check_same_scores(trained: dict, rebuilt: dict) -> None:
    """Logits of a fixed 1.5 s signal through the trained and the rebuilt modules agree."""
    wavs = 0.1 * torch.randn(1, 24000, generator=torch.Generator().manual_seed(0))
    logits = []
    for hp in (trained, rebuilt):
        modules = (hp["compute_features"], hp["embedding_model"], hp["classifier"])
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        device = hp["classifier"].linear.weight.device
        emb = hp["embedding_model"](hp["compute_features"](wavs.to(device)), None)
        logits.append(hp["classifier"].linear(emb).cpu())
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)
    if not torch.allclose(logits[0], logits[1], atol=1e-4, rtol=1e-4):
        raise RuntimeError(
            "the exported tagging model does not reproduce the trained model's scores "
            f"(max difference {float((logits[0] - logits[1]).abs().max()):.3g}); check that "
            f"the yaml keys {ARCHITECTURE_KEYS} are the ones that built the trained modules"
        )


def _model_card(title, scalars, label_encoder, multilabel, metrics) -> str:
    labels = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    shown = ", ".join(str(label) for label in labels[:20])
    if len(labels) > 20:
        shown += f", ... ({len(labels) - 20} more)"
    kind = "multi-label (sigmoid scores)" if multilabel else "single-label (log-posteriors)"
    lines = [
        f"# {title}",
        "",
        "A SLAP audio encoder (packed Transformer over 16x16 log-mel patches, "
        "multi-head attention pooling) fine-tuned with a linear classification layer, "
        "as in the SLAP paper (Sec. 3.1). Input: 16 kHz mono audio; EncoderClassifier encodes "
        "a clip whole (no windowing), so use clips up to the 30 s the model was trained on.",
        "",
        f"- Task: {kind}, {len(labels)} classes",
        f"- Classes: {shown}",
        "- Architecture: "
        + ", ".join(f"{k}={scalars[k]}" for k in ("embed_dim", "depth", "num_heads", "n_mels")),
        "",
        "## Test metrics",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
            if k != "metric"
        ]
    else:
        lines.append("Not evaluated.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from speechbrain.inference.classifiers import EncoderClassifier",
        "",
        'model = EncoderClassifier.from_hparams(source="PATH/TO/THIS/FOLDER", savedir="tmp")',
        'scores, best_score, index, label = model.classify_file("clip.wav")',
        "```",
        "",
        "`classify_batch(wavs, wav_lens)` takes a padded 16 kHz batch. The package "
        "`speechbrain-slap` must be installed (the modules come from it).",
        "",
        "## Files",
        "",
        "- `hyperparams.yaml`: the model definition (SpeechBrain HyperPyYAML)",
        "- `embedding_model.ckpt`, `classifier.ckpt`: state dicts",
        "- `label_encoder.ckpt`: class index <-> label (SpeechBrain CategoricalEncoder)",
        "- `SHA256SUMS`: check with `sha256sum -c SHA256SUMS`",
        "",
    ]
    return "\n".join(lines)
