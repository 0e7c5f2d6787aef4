"""``SLAPBrain``: single-stage SLAP pretraining through SpeechBrain's ``Brain``.

One training step (paper Fig. 1, ``DESIGN.md`` Sec. 2)::

    wavs -> log-mel -> SpecAugment -> patches -> PackedBatch
    student: [unmasked view ; masked view] in ONE packed forward   (ssl_view: dual)
             or one masked view for all three losses              (ssl_view: shared)
    teacher (EMA, no grad): unmasked view
    L = alpha * CLAP(MAP(view1), MAP_text(caption))
      + beta  * SSL(head(view2[masked]), head_teacher(teacher[masked]))
      + gamma * CAP(decoder(view1), caption)

A loss weight of 0 skips its branch. Only hooks are overridden; the loop,
precision, gradient accumulation and checkpointing are SpeechBrain's.

``packing: false`` runs the same model as the baseline that pads and masks:
the encoders see every clip padded to ``max_duration`` (compute spent on the
padding), pooling, decoder and SSL see the real tokens only, and the losses
equal the packed ones up to rounding. ``benchmarks/train_step_throughput.py``
compares the speed of the two.

Robustness (the README's "Robustness" section lists what was tried):

* Bad items. Batches may list items their loader could not use: manifest
  batches (``speechbrain_slap.data.pipelines.collate_usable``) in
  ``batch.bad_items``, each named here in a warning; the shard stream in
  ``batch.skipped`` (``StreamLoader`` names them). Both are counted per stage
  and summarised at its end (log, and ``skipped_items`` in the train log). A
  training batch with no usable item skips its optimizer step (no update, no
  EMA step, accumulated gradients dropped). Under DDP that is an error: every
  rank must run each step's forward and backward together (the gradient
  all-reduce and the contrastive gather wait for all ranks), so one rank
  cannot skip a step alone.
* Non-finite loss or gradient. The optimizer step it belongs to (all its
  accumulated micro-batches) is skipped: gradients zeroed, no optimizer step,
  no EMA update, no learning-rate step; counted (``nonfinite_steps``). Under
  DDP the ranks agree through an all-reduce of the flag, so their weights stay
  equal. After ``max_nonfinite_steps_in_row`` (default 20) skipped steps in a
  row the run stops with ``NonFiniteLossError``; skipped steps change no
  weights, so every checkpoint holds finite weights. This replaces
  SpeechBrain's ``nonfinite_patience``.
* Exact resume. Intra-epoch checkpoints are written at optimizer-step
  boundaries only (accumulated gradients are not checkpointed); the train
  sampler gets ``set_epoch`` every epoch (SpeechBrain calls it only on
  samplers it made), so a resumed epoch has the batches of the interrupted
  one; ``train_steps.jsonl`` is cut back to the recovered step. With the
  recipes' ``RandomState`` recoverable and loaders that own their RNG
  (``manifest.loader_kwargs``), a run killed and restarted reaches the
  parameters of an uninterrupted one (CPU, ``num_workers: 0``).

Authors
 * speechbrain-slap contributors 2026
"""

import json
import logging
import math
import time
from pathlib import Path

import speechbrain as sb
import torch

from speechbrain_slap.data.manifest import split_captions
from speechbrain_slap.lobes.caption_decoder import caption_loss
from speechbrain_slap.lobes.features import pad_to_hop
from speechbrain_slap.lobes.packing import (
    concat_packed,
    num_tokens_for_duration,
    random_token_mask,
)
from speechbrain_slap.losses import teacher_temperature
from speechbrain_slap.metrics import mean_recall_at_1, retrieval_metrics, zero_shot_accuracy

logger = logging.getLogger(__name__)

DEFAULT_MAX_NONFINITE_STEPS_IN_ROW = 20
# Items named in a stage's end-of-stage summary (each one is also named as it is met).
SUMMARY_IDS = 10


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


class SLAPBrain(sb.Brain):
    """SpeechBrain ``Brain`` for SLAP pretraining and fine-tuning.

    Expected ``modules``: ``compute_features``, ``audio_encoder``,
    ``audio_pooling``, ``text_encoder``, ``caption_decoder``, ``ssl_head``,
    ``teacher`` (``EMATeacher`` over ``audio_encoder`` and ``ssl_head``),
    ``clap_loss``. Expected hparams: ``loss_weights`` (``clap``, ``ssl``,
    ``cap``), ``ssl_view``, ``mask_ratio``, ``ssl_loss``, ``lr_schedule``,
    ``teacher_temp_warmup_steps``, optional ``spec_augment`` (list of modules),
    ``log_interval``, ``zeroshot_labels`` and ``zeroshot_prompts``; optional
    ``packing`` (default True; False pads every clip to ``max_duration``) and
    ``max_nonfinite_steps_in_row`` (default 20; see the module docstring).
    """

    # -- forward -----------------------------------------------------------
    def compute_forward(self, batch, stage):
        """Encodes a batch; returns a dict of what the objectives need."""
        batch = batch.to(self.device)
        wavs, wav_lens = pad_to_hop(*batch.sig)
        feats = self.modules.compute_features(wavs)
        if stage == sb.Stage.TRAIN:
            for augment in self.hparams.spec_augment or []:
                feats = augment(feats)
        encoder = _unwrap(self.modules.audio_encoder)
        packed = encoder.patchify(feats, wav_lens)
        out = {"packed": packed, "n_tokens": int(packed.cu_seqlens[-1])}
        weights = self.hparams.loss_weights
        # packing: false pads every clip to max_duration in the encoders (the baseline).
        pad_to = None if getattr(self.hparams, "packing", True) else self.padded_length()

        if stage != sb.Stage.TRAIN:
            tokens = self.modules.audio_encoder(packed, pad_to=pad_to)
            out["audio_emb"] = self.modules.audio_pooling(tokens, cu_seqlens=packed.cu_seqlens)
            return out

        use_ssl = weights["ssl"] > 0
        if use_ssl:
            token_mask = random_token_mask(packed, self.hparams.mask_ratio)
        if use_ssl and self.hparams.ssl_view == "dual":
            both = concat_packed(packed, packed)
            full_mask = torch.cat([torch.zeros_like(token_mask), token_mask])
            student = self.modules.audio_encoder(both, token_mask=full_mask, pad_to=pad_to)
            view1, view2 = student[: out["n_tokens"]], student[out["n_tokens"] :]
        elif use_ssl:  # shared: one masked view feeds all three losses
            view1 = view2 = self.modules.audio_encoder(packed, token_mask=token_mask, pad_to=pad_to)
        else:
            view1 = self.modules.audio_encoder(packed, pad_to=pad_to)

        if weights["clap"] > 0:
            out["audio_emb"] = self.modules.audio_pooling(view1, cu_seqlens=packed.cu_seqlens)
            out["text_emb"] = self.modules.text_encoder(list(batch.caption))
        if weights["cap"] > 0:
            tokens_in, _ = batch.tokens_in
            out["caption_logits"] = self.modules.caption_decoder(
                tokens_in, view1, cu_seqlens=packed.cu_seqlens
            )
        if use_ssl:
            with torch.no_grad():
                teacher_tokens = self.modules.teacher["audio_encoder"](packed, pad_to=pad_to)
                out["teacher_logits"] = self.modules.teacher["ssl_head"](teacher_tokens[token_mask])
            out["student_logits"] = self.modules.ssl_head(view2[token_mask])
            out["masked_clip_id"] = packed.clip_id[token_mask]
        return out

    def padded_length(self) -> int:
        """Tokens of a ``max_duration`` clip: what ``packing: false`` pads every clip to."""
        max_duration = getattr(self.hparams, "max_duration", None)
        if max_duration is None:
            raise ValueError("packing: false pads every clip to max_duration: set that hparam")
        features = self.modules.compute_features
        return num_tokens_for_duration(
            max_duration,
            features.sample_rate,
            features.hop_samples,
            _unwrap(self.modules.audio_encoder).n_mels,
        )

    def compute_objectives(self, predictions, batch, stage):
        """Weighted sum of the active losses; components go to ``self.loss_stats``."""
        if stage != sb.Stage.TRAIN:
            self._collect_eval(predictions, batch)
            return torch.zeros((), device=self.device)
        weights = self.hparams.loss_weights
        total = torch.zeros((), device=self.device)
        stats = {}
        if "text_emb" in predictions:
            stats["clap"] = self.modules.clap_loss(
                predictions["audio_emb"], predictions["text_emb"]
            )
            total = total + weights["clap"] * stats["clap"]
        if "caption_logits" in predictions:
            tokens_out, _ = batch.tokens_out
            stats["cap"] = caption_loss(
                predictions["caption_logits"], tokens_out, self.hparams.pad_index
            )
            total = total + weights["cap"] * stats["cap"]
        if "student_logits" in predictions:
            stats["ssl"] = self.hparams.ssl_loss(
                predictions["student_logits"],
                predictions["teacher_logits"],
                predictions["masked_clip_id"],
                teacher_temp=self.teacher_temp,
            )
            total = total + weights["ssl"] * stats["ssl"]
        self.loss_stats = {k: float(v.detach()) for k, v in stats.items()}
        self.batch_tokens = predictions["n_tokens"]
        return total

    @property
    def teacher_temp(self) -> float:
        """Teacher temperature at the current optimizer step (0.04 -> 0.07)."""
        return teacher_temperature(
            self.optimizer_step,
            self.hparams.teacher_temp_warmup_steps,
            self.hparams.teacher_temp_start,
            self.hparams.teacher_temp_end,
        )

    # -- optimisation ----------------------------------------------------------
    def fit_batch(self, batch):
        """SpeechBrain's ``fit_batch``; a batch with no usable item skips its step."""
        self._note_bad_items(batch)
        if len(batch) == 0:
            return self._skip_empty_batch(batch)
        return super().fit_batch(batch)

    def _skip_empty_batch(self, batch):
        if sb.utils.distributed.is_distributed_initialized():
            raise RuntimeError(
                f"rank {torch.distributed.get_rank()}: no item of training batch {self.step} "
                f"could be used ({batch.bad_items}). Under DDP every rank must run the "
                "forward and backward of each step (the gradient all-reduce and the "
                "contrastive gather wait for all ranks), so one rank cannot skip a step; "
                "remove the unusable files (named above) from the manifest and restart: "
                "the run resumes from its newest checkpoint"
            )
        self.empty_batches += 1
        self._empty_in_step = True
        if self.step % self.grad_accumulation_factor == 0:  # the step ends here
            self.zero_grad(set_to_none=True)
            self._end_skipped_step("a batch with no usable item")
        return torch.tensor(float("nan"))  # update_average leaves it out

    def check_loss_isfinite(self, loss):
        """Marks the current optimizer step for skipping if ``loss`` is NaN or infinite.

        Called by ``fit_batch`` before ``backward``; ``optimizers_step``
        skips the step (see the module docstring).
        """
        if not torch.isfinite(loss):
            self._nonfinite_loss = True
            logger.warning(
                "non-finite loss (%s) at batch %d: optimizer step %d will be skipped",
                float(loss.detach()),
                self.step,
                self.optimizer_step + 1,
            )

    def _skip_reason(self) -> str | None:
        """Why this optimizer step must be skipped, agreed by all ranks; None to step."""
        reason = None
        if self._empty_in_step:
            reason = "a batch with no usable item"
        elif self._nonfinite_loss:
            reason = "non-finite loss"
        elif not self.scaler.is_enabled() and not math.isfinite(self.grad_norm):
            # With fp16 loss scaling, non-finite gradients are the scaler's business.
            reason = "non-finite gradient"
        if sb.utils.distributed.is_distributed_initialized():
            flag = torch.tensor([0.0 if reason is None else 1.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if reason is None and flag.item() > 0:
                reason = "non-finite loss or gradient on another rank"
        return reason

    def optimizers_step(self):
        """Clips the gradients of ALL parameter groups, then steps, or skips the step.

        (``Brain.optimizers_step`` clips only ``param_groups[0]``.) The
        learning rate of the step is set here (``lr_schedule``), so a skipped
        step does not advance the schedule.
        """
        optimizers = self.freeze_optimizers(self.optimizers_dict or {})
        for opt in optimizers.values():
            self.scaler.unscale_(opt)
        params = [p for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        reason = self._skip_reason()
        if reason is None:
            self.current_lr = self.hparams.lr_schedule(self.optimizer)
            for opt in optimizers.values():
                self.scaler.step(opt)
        self.scaler.update()  # with loss scaling, a skipped step lowers the scale
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        if reason is None:
            self.optimizer_step += 1
            self.nonfinite_in_row = 0
            self._nonfinite_loss = self._empty_in_step = False
        else:
            self._end_skipped_step(reason)

    def _end_skipped_step(self, reason: str):
        """Counts a skipped optimizer step; stops after too many non-finite ones in a row."""
        self._step_skipped = True
        self._nonfinite_loss = self._empty_in_step = False
        logger.warning("optimizer step %d skipped: %s", self.optimizer_step + 1, reason)
        if reason == "a batch with no usable item":
            return
        self.nonfinite_steps += 1
        self.nonfinite_in_row += 1
        limit = getattr(
            self.hparams, "max_nonfinite_steps_in_row", DEFAULT_MAX_NONFINITE_STEPS_IN_ROW
        )
        if self.nonfinite_in_row >= limit:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_row} optimizer steps in a row (after step "
                f"{self.optimizer_step}) had a non-finite loss or gradient "
                f"(max_nonfinite_steps_in_row: {limit}); training stopped. Skipped steps "
                "change no weights: the newest checkpoint in "
                f"{getattr(self.checkpointer, 'checkpoints_dir', None)} holds finite weights. "
                "Lower the learning rate, check the data of these steps, or use bf16/fp32 "
                "instead of fp16 before resuming."
            )

    def on_fit_batch_start(self, batch, should_step):
        """Starts the step timer."""
        self._step_start = time.perf_counter()
        self._step_skipped = False

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """EMA update after each optimizer step that was taken; step logging."""
        if should_step and not self._step_skipped:
            self.current_momentum = self.modules.teacher.update(
                {k: self.modules[k] for k in ("audio_encoder", "ssl_head")}
            )
        if not torch.isfinite(loss):
            return  # counted and logged as a skipped step; kept out of the averages
        elapsed = max(time.perf_counter() - self._step_start, 1e-9)
        record = {
            "step": self.optimizer_step,
            "loss": float(loss.detach()),
            **{f"loss_{k}": v for k, v in self.loss_stats.items()},
            "logit_scale": float(_unwrap(self.modules.clap_loss).scale.detach()),
            "ema_momentum": getattr(self, "current_momentum", None),
            "lr": getattr(self, "current_lr", None),
            "tokens_per_s": round(self.batch_tokens / elapsed, 1),
            "teacher_temp": self.teacher_temp,
        }
        self.step_log.append(record)
        if sb.utils.distributed.if_main_process() and (self.step % self.hparams.log_interval == 0):
            with open(self._steps_file, "a") as fout:
                fout.write(json.dumps(record) + "\n")

    def _log_epoch(self, epoch, valid_metrics: dict, monitor: dict):
        """Appends the epoch's retrieval metrics to ``train_epochs.jsonl`` (with its last step)."""
        if not sb.utils.distributed.if_main_process():
            return
        record = {"step": self.optimizer_step, "epoch": epoch}
        for key in ("t2a_R@1", "a2t_R@1", "mean_R@1", "zeroshot_accuracy"):
            if key in valid_metrics:
                record[f"valid_{key}"] = valid_metrics[key]
            if f"train_{key}" in monitor:
                record[f"train_{key}"] = monitor[f"train_{key}"]
        with open(self._epochs_file, "a") as fout:
            fout.write(json.dumps(record) + "\n")

    @property
    def _steps_file(self) -> Path:
        return Path(self.hparams.output_folder) / "train_steps.jsonl"

    @property
    def _epochs_file(self) -> Path:
        return Path(self.hparams.output_folder) / "train_epochs.jsonl"

    def on_fit_start(self):
        """Initialises counters and step logging, then SpeechBrain's fit start (recovery).

        After recovering a checkpoint, ``train_steps.jsonl`` and
        ``train_epochs.jsonl`` are cut back to the recovered optimizer step, so
        steps trained again are not logged twice.
        """
        self.step_log = []
        self.loss_stats = {}
        self.batch_tokens = 0
        self.skipped_items = []
        self.empty_batches = self.nonfinite_steps = self.nonfinite_in_row = 0
        self._nonfinite_loss = self._empty_in_step = self._step_skipped = False
        super().on_fit_start()
        if self.optimizer_step > 0 and sb.utils.distributed.if_main_process():
            for path in (self._steps_file, self._epochs_file):
                self._cut_log(path, self.optimizer_step)

    @staticmethod
    def _cut_log(path: Path, last_step: int):
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line)
            except (ValueError, KeyError):  # a line cut short by a kill
                continue
        path.write_text("".join(line + "\n" for line in kept))

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's loader; a training ``batch_sampler`` also gets ``set_epoch`` calls.

        ``Brain`` calls ``set_epoch`` only on samplers it made (shuffling,
        DDP); without it a ``DynamicBatchSampler`` keeps the seed of epoch 0
        and reorders its batches at the end of each pass, so a run resumed in
        epoch ``e`` would see other batches than the run it continues.
        """
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN and self.train_sampler is None:
            sampler = loader_kwargs.get("batch_sampler")
            if hasattr(sampler, "set_epoch"):
                self.train_sampler = sampler
        return loader

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        # Checkpoints hold no gradients: save only when no micro-batch is accumulated.
        if self.step % self.grad_accumulation_factor != 0:
            return False
        return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)

    def _note_bad_items(self, batch):
        """Names (``bad_items``) and counts (also ``skipped``) the items a batch left out."""
        for item_id, reason in getattr(batch, "bad_items", ()):
            logger.warning("skipped item %s: %s", item_id, reason)
            self.skipped_items.append(item_id)
        # The shard stream has named its skipped samples already (StreamLoader).
        self.skipped_items.extend(name for name, _ in getattr(batch, "skipped", ()))

    def _skip_summary(self, stage, epoch) -> dict:
        """Logs and returns what the stage skipped."""
        stats = {"skipped_items": len(self.skipped_items)}
        names = ", ".join(map(str, self.skipped_items[:SUMMARY_IDS]))
        if len(self.skipped_items) > SUMMARY_IDS:
            names += f" and {len(self.skipped_items) - SUMMARY_IDS} more"
        parts = [f"{len(self.skipped_items)} items skipped" + (f" ({names})" if names else "")]
        if stage == sb.Stage.TRAIN:
            stats["empty_batches"] = self.empty_batches
            stats["nonfinite_steps"] = self.nonfinite_steps
            parts.append(f"{self.empty_batches} batches with no usable item")
            parts.append(
                f"{self.nonfinite_steps} optimizer steps skipped for a non-finite loss or gradient"
            )
        logger.log(
            logging.WARNING if any(stats.values()) else logging.INFO,
            "%s stage, epoch %s: %s",
            stage.name.lower(),
            epoch,
            "; ".join(parts),
        )
        return stats

    # -- evaluation ---------------------------------------------------------------
    def on_stage_start(self, stage, epoch=None):
        """Resets the stage's skip counters and the collected embeddings of an evaluation.

        A training stage also empties ``step_log`` (its loss components are
        averaged per epoch; ``train_steps.jsonl`` keeps every logged step) and
        the skip marks of a step left unfinished by the previous epoch.
        """
        self.skipped_items = []
        if stage == sb.Stage.TRAIN:
            self.empty_batches = self.nonfinite_steps = 0
            self.step_log = []
            self._nonfinite_loss = self._empty_in_step = False
        else:
            self.eval_audio, self.eval_captions, self.eval_labels = [], [], []

    def evaluate_batch(self, batch, stage):
        """SpeechBrain's ``evaluate_batch``; items that could not be read are left out."""
        self._note_bad_items(batch)
        if len(batch) == 0:
            return torch.zeros(())
        return super().evaluate_batch(batch, stage)

    def _collect_eval(self, predictions, batch):
        self.eval_audio.append(predictions["audio_emb"].float().cpu())
        self.eval_captions.extend(split_captions(c) for c in batch.captions)
        if hasattr(batch, "label"):
            labels, _ = batch.label
            self.eval_labels.append(labels[:, 0].cpu())

    @torch.no_grad()
    def _embed_texts(self, texts, batch_size=256):
        encoder = self.modules.text_encoder
        return torch.cat(
            [
                encoder(texts[i : i + batch_size]).float().cpu()
                for i in range(0, len(texts), batch_size)
            ]
        )

    @torch.no_grad()
    def monitor_train_retrieval(self) -> dict:
        """Retrieval metrics on ``hparams.train_monitor``: training clips, scored like valid.

        ``train.py`` sets it to a few hundred training clips read like the valid
        split (start crop, first caption), so each epoch's log puts train R@1
        beside valid R@1: a model that memorises its clips shows the gap.

        Returns
        -------
        dict
            ``retrieval_metrics`` of those clips, keys prefixed with ``train_``
            (empty without a monitor set).
        """
        monitor = getattr(self.hparams, "train_monitor", None)
        if monitor is None or len(monitor) == 0:
            return {}
        from speechbrain_slap.data.pipelines import loader_kwargs

        kept = (self.eval_audio, self.eval_captions, self.eval_labels)
        self.eval_audio, self.eval_captions, self.eval_labels = [], [], []
        kwargs = loader_kwargs(monitor, {**vars(self.hparams), "num_workers": 0}, train=False)
        for batch in torch.utils.data.DataLoader(monitor, **kwargs):
            if len(batch):
                self._collect_eval(self.compute_forward(batch, sb.Stage.VALID), batch)
        metrics, _, _ = self.evaluate_retrieval()
        self.eval_audio, self.eval_captions, self.eval_labels = kept
        return {f"train_{key}": value for key, value in metrics.items()}

    def evaluate_retrieval(self):
        """Retrieval metrics (all captions of each clip) over the collected stage.

        With zero-shot labels, ``zeroshot_accuracy`` covers the clips whose
        ``sound_type`` is a zero-shot class (absent when none is);
        ``zeroshot_unlabelled`` counts the others.
        """
        if not self.eval_audio:
            raise ValueError(
                f"no clip of the evaluation set could be used ({len(self.skipped_items)} "
                "skipped, named in the log)"
            )
        audio = torch.nn.functional.normalize(torch.cat(self.eval_audio), dim=-1)
        texts, text_to_audio = [], []
        for index, captions in enumerate(self.eval_captions):
            texts.extend(captions)
            text_to_audio.extend([index] * len(captions))
        text = torch.nn.functional.normalize(self._embed_texts(texts), dim=-1)
        similarity = text @ audio.T
        metrics = retrieval_metrics(similarity, torch.tensor(text_to_audio))
        metrics["mean_R@1"] = mean_recall_at_1(metrics)
        metrics["chance_R@1"] = 1.0 / audio.shape[0]
        metrics["n_test_audio"] = audio.shape[0]
        if self.eval_labels and getattr(self.hparams, "zeroshot_prompts", None):
            # Label -1: the clip's sound_type is not a zero-shot class; it is left out.
            labels = torch.cat(self.eval_labels)
            labelled = labels >= 0
            metrics["zeroshot_unlabelled"] = int((~labelled).sum())
            if labelled.any():
                prompts = torch.nn.functional.normalize(
                    self._embed_texts(list(self.hparams.zeroshot_prompts)), dim=-1
                )
                metrics["zeroshot_accuracy"] = zero_shot_accuracy(
                    audio[labelled] @ prompts.T, labels[labelled]
                )
        return metrics, similarity, text_to_audio

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs (with what was skipped), keeps the best checkpoint by mean R@1, writes results."""
        skipped = self._skip_summary(stage, epoch)
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            for key in self.loss_stats:
                values = [r[f"loss_{key}"] for r in self.step_log if f"loss_{key}" in r]
                self.train_stats[f"loss_{key}"] = sum(values) / max(len(values), 1)
            self.train_stats.update(skipped)
            return
        metrics, similarity, text_to_audio = self.evaluate_retrieval()
        logged = {k: round(v, 4) for k, v in metrics.items()}
        if skipped["skipped_items"]:
            logged.update(skipped)
        if stage == sb.Stage.VALID:
            monitor = self.monitor_train_retrieval()
            train_stats = {**self.train_stats, **{k: round(v, 4) for k, v in monitor.items()}}
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": getattr(self, "current_lr", None)},
                train_stats=train_stats,
                valid_stats=logged,
            )
            self._log_epoch(epoch, metrics, monitor)
            self.checkpointer.save_and_keep_only(
                meta={"mean_R@1": metrics["mean_R@1"]}, max_keys=["mean_R@1"]
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=logged,
            )
            if sb.utils.distributed.if_main_process():
                self.write_test_report(metrics, similarity, text_to_audio)

    def write_test_report(self, metrics, similarity, text_to_audio):
        """``test_results.json``, the similarity-matrix PNG and the training curves PNG."""
        from speechbrain_slap.plots import plot_similarity, plot_training_curves

        output = Path(self.hparams.output_folder)
        with open(output / "test_results.json", "w") as fout:
            json.dump(metrics, fout, indent=2)
        plot_similarity(similarity, text_to_audio, output / "test_similarity.png")
        plot_training_curves(
            self._steps_file, output / "training_curves.png", epochs_jsonl=self._epochs_file
        )
        logger.info("test results written to %s", output / "test_results.json")
