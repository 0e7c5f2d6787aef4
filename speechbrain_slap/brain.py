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

Authors
 * speechbrain-slap contributors 2026
"""

import json
import logging
import time
from pathlib import Path

import speechbrain as sb
import torch

from speechbrain_slap.data import split_captions
from speechbrain_slap.lobes.caption_decoder import caption_loss
from speechbrain_slap.lobes.features import pad_to_hop
from speechbrain_slap.lobes.packing import (
    concat_packed,
    num_tokens_for_duration,
    random_token_mask,
)
from speechbrain_slap.losses import teacher_temperature
from speechbrain_slap.metrics import retrieval_metrics, zero_shot_accuracy

logger = logging.getLogger(__name__)


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
    ``packing`` (default True; False pads every clip to ``max_duration``).
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
    def optimizers_step(self):
        """SpeechBrain's step, but gradient clipping covers ALL parameter groups.

        (``Brain.optimizers_step`` clips only ``param_groups[0]``.)
        """
        optimizers = self.freeze_optimizers(self.optimizers_dict or {})
        for opt in optimizers.values():
            self.scaler.unscale_(opt)
        params = [p for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        for opt in optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.optimizer_step += 1

    def on_fit_batch_start(self, batch, should_step):
        """Sets the learning rate of the coming optimizer step; starts the step timer."""
        if should_step:
            self.current_lr = self.hparams.lr_schedule(self.optimizer)
        self._step_start = time.perf_counter()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """EMA update after each optimizer step; step logging."""
        if should_step:
            self.current_momentum = self.modules.teacher.update(
                {k: self.modules[k] for k in ("audio_encoder", "ssl_head")}
            )
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
            with open(Path(self.hparams.output_folder) / "train_steps.jsonl", "a") as fout:
                fout.write(json.dumps(record) + "\n")

    def on_fit_start(self):
        """Initialises step logging, then SpeechBrain's fit start (recovery)."""
        self.step_log = []
        self.loss_stats = {}
        self.batch_tokens = 0
        super().on_fit_start()

    # -- evaluation ---------------------------------------------------------------
    def on_stage_start(self, stage, epoch=None):
        """Resets the collected embeddings of an evaluation stage."""
        if stage != sb.Stage.TRAIN:
            self.eval_audio, self.eval_captions, self.eval_labels = [], [], []

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

    def evaluate_retrieval(self):
        """Retrieval metrics (all captions of each clip) over the collected stage."""
        audio = torch.nn.functional.normalize(torch.cat(self.eval_audio), dim=-1)
        texts, text_to_audio = [], []
        for index, captions in enumerate(self.eval_captions):
            texts.extend(captions)
            text_to_audio.extend([index] * len(captions))
        text = torch.nn.functional.normalize(self._embed_texts(texts), dim=-1)
        similarity = text @ audio.T
        metrics = retrieval_metrics(similarity, torch.tensor(text_to_audio))
        metrics["mean_R@1"] = 0.5 * (metrics["t2a_R@1"] + metrics["a2t_R@1"])
        metrics["chance_R@1"] = 1.0 / audio.shape[0]
        metrics["n_test_audio"] = audio.shape[0]
        if self.eval_labels and getattr(self.hparams, "zeroshot_prompts", None):
            prompts = torch.nn.functional.normalize(
                self._embed_texts(list(self.hparams.zeroshot_prompts)), dim=-1
            )
            metrics["zeroshot_accuracy"] = zero_shot_accuracy(
                audio @ prompts.T, torch.cat(self.eval_labels)
            )
        return metrics, similarity, text_to_audio

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, keeps the best checkpoint by mean R@1, writes test results."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            for key in self.loss_stats:
                values = [r[f"loss_{key}"] for r in self.step_log if f"loss_{key}" in r]
                self.train_stats[f"loss_{key}"] = sum(values) / max(len(values), 1)
            return
        metrics, similarity, text_to_audio = self.evaluate_retrieval()
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": getattr(self, "current_lr", None)},
                train_stats=self.train_stats,
                valid_stats={k: round(v, 4) for k, v in metrics.items()},
            )
            self.checkpointer.save_and_keep_only(
                meta={"mean_R@1": metrics["mean_R@1"]}, max_keys=["mean_R@1"]
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats={k: round(v, 4) for k, v in metrics.items()},
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
        plot_training_curves(output / "train_steps.jsonl", output / "training_curves.png")
        logger.info("test results written to %s", output / "test_results.json")
