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

The recipes export the trained model with
``speechbrain_slap.model_folder.export_tagging_model``, a folder that
SpeechBrain's stock ``speechbrain.inference.classifiers.EncoderClassifier.from_hparams``
loads. ``TaggingClassifier``, its subclass, loads it the same way after the
checks every model folder gets (``SHA256SUMS``, the yaml's allow-list), from a
local folder or a Hugging Face hub id, and adds a ``precision`` (``bf16``
autocast on CPUs and GPUs).

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.classifiers import EncoderClassifier

from speechbrain_slap.data.audio import load_audio
from speechbrain_slap.lobes.features import pad_to_hop
from speechbrain_slap.lobes.packing import checked_lengths, frames_from_relative_lengths
from speechbrain_slap.metrics import accuracy, macro_average_precision
from speechbrain_slap.model_folder.loading import CheckedFolderLoading
from speechbrain_slap.outputs import write_json
from speechbrain_slap.precision import InferencePrecision

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
    lengths = checked_lengths(lengths, x)
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
            path = write_json(
                Path(self.hparams.output_folder) / "test_results.json", self.test_stats
            )
            logger.info("test results written to %s", path)


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


def one_hot_targets(label_encoder: CategoricalEncoder, column: str):
    """A data pipeline: the class name in a manifest ``column`` -> one-hot ``targets`` ``(C,)``.

    Arguments
    ---------
    label_encoder : CategoricalEncoder
        Class name -> index.
    column : str
        The manifest column holding the class name.

    Returns
    -------
    A SpeechBrain dynamic item (``takes(column)``, ``provides("targets")``).

    Example
    -------
    >>> pipeline = one_hot_targets(make_label_encoder(["dog", "rain"], 2, "toy"), "label")
    >>> pipeline("rain")
    tensor([0., 1.])
    """
    n_classes = len(label_encoder)

    @sb.utils.data_pipeline.takes(column)
    @sb.utils.data_pipeline.provides("targets")
    def targets(label):
        index = torch.tensor(label_encoder.encode_label(label))
        return torch.nn.functional.one_hot(index, n_classes).float()

    return targets


def tagging_datasets(
    manifests: dict, sample_rate: int, target_pipeline, replacements: dict
) -> dict:
    """A ``DynamicItemDataset`` per manifest: ``id``, ``sig`` (checked audio) and ``targets``.

    Arguments
    ---------
    manifests : dict
        Split name -> manifest CSV (``ID, duration, wav`` and the label columns).
    sample_rate : int
        Audio is read at this rate (``speechbrain_slap.data.audio.load_audio``).
    target_pipeline : callable
        A dynamic item providing ``targets`` (e.g. ``one_hot_targets``).
    replacements : dict
        ``$key`` replacements of the manifests, e.g. ``{"data_root": folder}``.

    Returns
    -------
    dict
        Split name -> dataset.
    """
    from speechbrain.dataio.dataset import DynamicItemDataset

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, sample_rate)

    datasets = {}
    for split, manifest in manifests.items():
        dataset = DynamicItemDataset.from_csv(manifest, replacements=replacements)
        dataset.add_dynamic_item(audio_pipeline)
        dataset.add_dynamic_item(target_pipeline)
        dataset.set_output_keys(["id", "sig", "targets"])
        datasets[split] = dataset
    return datasets


class TaggingClassifier(InferencePrecision, CheckedFolderLoading, EncoderClassifier):
    """SpeechBrain's ``EncoderClassifier`` for a tagging folder: files checked, a precision.

    ``from_hparams`` checks the folder (or fetches a hub id) first. The stock
    ``EncoderClassifier`` always computes in fp32 (it does not apply
    ``run_opts["precision"]``); this subclass runs the features, the SLAP
    encoder and the pooling under the autocast of ``precision``
    (``speechbrain_slap.precision``); the embedding is returned in fp32 and the
    classifier head runs in fp32. With ``fp32`` it computes as the stock class.

    Arguments
    ---------
    *args, **kwargs
        As ``EncoderClassifier`` (build it with ``from_hparams``).
    precision : str, optional
        ``fp32``, ``bf16``, ``fp16`` or ``int8`` (the embedding model's linear
        layers, CPU only); the default is ``run_opts["precision"]`` (``fp32``
        unless set). ``set_precision`` changes it later.

    Example
    -------
    >>> model = TaggingClassifier.from_hparams(source="org/slap-esc50")  # doctest: +SKIP
    >>> model.classify_file("clip.wav")[3]  # doctest: +SKIP
    ['dog']
    >>> tagger = TaggingClassifier.from_hparams(source="tagger", precision="bf16")  # doctest: +SKIP
    """

    INT8_MODULES = ("embedding_model",)

    def encode_batch(self, wavs, wav_lens=None, normalize=False):
        """``EncoderClassifier.encode_batch`` under the precision's autocast; fp32 out."""
        with self.inference_ctx:
            embeddings = super().encode_batch(wavs, wav_lens, normalize)
        return embeddings.float()


def finetune_tagging(
    hparams: dict,
    run_opts: dict,
    datasets: tuple,
    label_encoder: CategoricalEncoder,
    title: str,
    sampler=None,
) -> TaggingBrain:
    """The tagging recipes' loop: fit, test, export a folder ``EncoderClassifier`` loads.

    The learning rate schedule spans the run's optimizer steps
    (``speechbrain_slap.recipe.set_total_steps``). The valid split selects the
    checkpoint that is tested when ``select_best`` is set; otherwise it is only
    monitored and the last epoch is tested. The tested model is exported to
    ``export_folder`` (``speechbrain_slap.model_folder.export_tagging_model``).

    Arguments
    ---------
    hparams : dict
        The loaded tagging yaml (``train_dataloader_options``,
        ``eval_dataloader_options``, ``number_of_epochs``, ``select_best``,
        ``export_folder`` and ``TaggingBrain``'s keys).
    run_opts : dict
        SpeechBrain's run options.
    datasets : tuple
        ``(train, valid, test)`` datasets (``tagging_datasets``).
    label_encoder : CategoricalEncoder
        Class index <-> name of the classifier's outputs.
    title : str
        First line of the exported model card.
    sampler : torch.utils.data.Sampler, optional
        Draws the training clips (e.g. balanced sampling); default: shuffled.

    Returns
    -------
    TaggingBrain
        The trained Brain (``test_stats`` holds the test metrics).
    """
    from speechbrain_slap.model_folder import export_tagging_model
    from speechbrain_slap.recipe import batches_per_rank, make_brain, set_total_steps

    train, valid, test = datasets
    brain = make_brain(TaggingBrain, hparams, run_opts)
    train_options = dict(hparams["train_dataloader_options"])
    if sampler is not None:
        train_options["sampler"] = sampler
        train_options.pop("shuffle", None)
        brain.train_sampler = sampler  # SpeechBrain calls its set_epoch: each epoch draws anew
    else:
        train_options["shuffle"] = True
    n_train = len(sampler) if sampler is not None else len(train)
    batches = batches_per_rank(math.ceil(n_train / train_options["batch_size"]))
    set_total_steps(hparams, batches, brain.grad_accumulation_factor, schedules=("lr_schedule",))
    brain.fit(
        brain.hparams.epoch_counter,
        train,
        valid,
        train_loader_kwargs=train_options,
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )
    brain.evaluate(
        test,
        max_key=brain.metric_name if hparams["select_best"] else None,
        test_loader_kwargs=hparams["eval_dataloader_options"],
    )
    sb.utils.distributed.run_on_main(
        export_tagging_model,
        kwargs={
            "hparams": hparams,
            "label_encoder": label_encoder,
            "out_dir": hparams["export_folder"],
            "title": title,
            "metrics": brain.test_stats,
        },
    )
    return brain
