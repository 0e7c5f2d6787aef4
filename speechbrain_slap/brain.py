"""``SLAPBrain``: single-stage SLAP pretraining through SpeechBrain's ``Brain``.

One training step (paper Fig. 1, ``DESIGN.md`` Sec. 2)::

    wavs -> log-mel -> SpecAugment -> patches -> PackedBatch
    student: [unmasked view ; masked view] in ONE packed forward   (ssl_view: dual)
             or one masked view for all three losses              (ssl_view: shared)
    teacher (EMA, no grad): unmasked view
    L = alpha * CLAP(MAP(view1), MAP_text(caption))
      + beta  * SSL(head(view2[masked]), head_teacher(teacher[masked]))
      + gamma * CAP(decoder(view1), caption)

A loss weight of 0 skips its branch. Hooks are overridden, not the loop:
precision, gradient accumulation and checkpointing are SpeechBrain's. Two
run options are done SLAP's way:

* ``--compile`` (``compile: True``): ``_compile`` compiles the encoders'
  blocks in place with dynamic shapes (state keys unchanged) instead of
  wrapping whole modules with static shapes.
* ``contrastive_gradient_cache: True`` with ``grad_accumulation_factor`` K:
  the CLAP loss of an optimizer step contrasts the clips of all its K
  micro-batches (over all ranks), through a gradient cache
  (``speechbrain_slap.gradient_cache``); ``fit_batch_cached`` replaces
  SpeechBrain's ``fit_batch`` body for that, since no backward can start
  before the step's last micro-batch is embedded.

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
  boundaries only (accumulated gradients and the gradient cache's held
  micro-batches are not checkpointed); the train sampler gets ``set_epoch``
  every epoch (SpeechBrain calls it only on samplers it made), so a resumed
  epoch has the batches of the interrupted one; ``train_steps.jsonl`` is cut
  back to the recovered step. With the recipes' ``RandomState`` recoverable
  and loaders that own their RNG (``manifest.loader_kwargs``), a run killed
  and restarted reaches the parameters of an uninterrupted one (CPU,
  ``num_workers: 0``).

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
from speechbrain_slap.gradient_cache import (
    CachedMicroBatch,
    cached_gradient_product,
    contrastive_gradients,
    draw_seed,
    replayed_rng,
)
from speechbrain_slap.lobes.caption_decoder import caption_loss
from speechbrain_slap.lobes.features import pad_to_hop
from speechbrain_slap.lobes.onset import check_onset_settings, onset_windows
from speechbrain_slap.lobes.packing import (
    concat_packed,
    num_tokens_for_duration,
    random_token_mask,
    unpack_tokens,
    unpack_values,
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


def persistent_debug_checkpoints(run_opts: dict | None) -> dict | None:
    """``run_opts`` with ``debug_persistently`` set when ``debug`` is.

    SpeechBrain's ``--debug`` moves the checkpointer into a temporary folder
    deleted at exit, so the checkpoints of a debug run are gone and ``slap
    export`` of its output finds none. Debug runs of these recipes checkpoint
    into ``<output_folder>/save`` like real runs, so the whole pipeline (train,
    export, load) can be tried in minutes.

    Arguments
    ---------
    run_opts : dict, optional
        SpeechBrain's run options.

    Returns
    -------
    dict or None

    Example
    -------
    >>> persistent_debug_checkpoints({"debug": True})
    {'debug': True, 'debug_persistently': True}
    >>> persistent_debug_checkpoints({"debug": False})
    {'debug': False}
    """
    if run_opts and run_opts.get("debug"):
        return {**run_opts, "debug_persistently": True}
    return run_opts


class SLAPBrain(sb.Brain):
    """SpeechBrain ``Brain`` for SLAP pretraining and fine-tuning.

    Expected ``modules``: ``compute_features``, ``audio_encoder``,
    ``audio_pooling``, ``text_encoder``, ``caption_decoder``, ``ssl_head``,
    ``teacher`` (``EMATeacher`` over ``audio_encoder`` and ``ssl_head``),
    ``clap_loss``. Expected hparams: ``loss_weights`` (``clap``, ``ssl``,
    ``cap``), ``ssl_view``, ``mask_ratio``, ``ssl_loss``, ``lr_schedule``,
    ``teacher_temp_warmup_steps``, optional ``spec_augment`` (list of modules),
    ``log_interval``, ``zeroshot_labels`` and ``zeroshot_prompts``; optional
    ``packing`` (default True; False pads every clip to ``max_duration``),
    ``lr_scales`` (see ``init_optimizers``),
    ``contrastive_gradient_cache`` (default False) and
    ``max_nonfinite_steps_in_row`` (default 20; see the module docstring).

    Under ``--debug`` the checkpoints go to the yaml's checkpointer folder as
    in a real run (``persistent_debug_checkpoints``), not a temporary folder.
    """

    def __init__(
        self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None
    ):
        super().__init__(
            modules=modules,
            opt_class=opt_class,
            hparams=hparams,
            run_opts=persistent_debug_checkpoints(run_opts),
            checkpointer=checkpointer,
        )

    # -- forward -----------------------------------------------------------
    def compute_forward(self, batch, stage):
        """Encodes a batch; returns a dict of what the objectives need."""
        batch = batch.to(self.device)
        pad_to = self.encoder_pad_to()
        if stage != sb.Stage.TRAIN:
            packed = self._packed_features(batch, stage)
            tokens = self.modules.audio_encoder(packed, pad_to=pad_to)
            out = {
                "packed": packed,
                "n_tokens": int(packed.cu_seqlens[-1]),
                "audio_emb": self.modules.audio_pooling(tokens, cu_seqlens=packed.cu_seqlens),
            }
            if getattr(self.hparams, "zeroshot_prompts", None):
                window, window_cu = onset_windows(tokens, packed, *self.onset_settings())
                out["onset_emb"] = self.modules.audio_pooling(window, cu_seqlens=window_cu)
            if stage == sb.Stage.TEST and self.caption_prompt_ids is not None:
                out["caption_prompt_scores"] = self._caption_prompt_scores(tokens, packed)
            return out

        packed, token_mask = self._training_inputs(batch)
        out = {"packed": packed, "n_tokens": int(packed.cu_seqlens[-1])}
        weights = self.hparams.loss_weights
        use_ssl = token_mask is not None
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
            tokens_in, out["caption_targets"], per_clip = self._decoder_targets(batch)
            out["caption_logits"] = self.modules.caption_decoder(
                tokens_in,
                view1,
                cu_seqlens=packed.cu_seqlens,
                time_index=packed.pos_t,
                captions_per_clip=per_clip,
            )
        if use_ssl:
            with torch.no_grad():
                teacher_tokens = self.modules.teacher["audio_encoder"](packed, pad_to=pad_to)
                out["teacher_logits"] = self.modules.teacher["ssl_head"](teacher_tokens[token_mask])
            out["student_logits"] = self.modules.ssl_head(view2[token_mask])
            out["masked_clip_id"] = packed.clip_id[token_mask]
        return out

    def _decoder_targets(self, batch):
        """``(tokens_in, tokens_out, captions_per_clip)`` of the decoder's training rows.

        ``(B, U)`` ids, one caption per clip; with ``decoder_captions`` K > 1
        the batch holds ``(B, K, max_length)`` blocks (``clip_caption_ids``),
        flattened here to ``(B * K, U)`` rows, each clip's consecutive, and cut
        to the longest real row.
        """
        tokens_in, _ = batch.tokens_in
        tokens_out, _ = batch.tokens_out
        if tokens_in.dim() == 2:
            return tokens_in, tokens_out, 1
        per_clip = tokens_in.shape[1]
        tokens_in, tokens_out = tokens_in.flatten(0, 1), tokens_out.flatten(0, 1)
        real = tokens_out.ne(self.hparams.pad_index).any(dim=0).nonzero()
        length = int(real.max()) + 1 if real.numel() else 1
        return tokens_in[:, :length], tokens_out[:, :length], per_clip

    @property
    def caption_prompt_ids(self) -> torch.Tensor | None:
        """``hparams.zeroshot_prompt_ids``: the zero-shot prompts as caption prefixes.

        ``(K, U)`` caption-token ids (``caption_prompt_ids`` of
        ``speechbrain_slap.lobes.caption_decoder``), set by a recipe that has a
        tokenizer; with them the test stage also scores zero-shot by the caption
        decoder (``zeroshot_caption_accuracy``). None without them or without a
        decoder.
        """
        ids = getattr(self.hparams, "zeroshot_prompt_ids", None)
        return ids if ids is not None and "caption_decoder" in self.modules else None

    def onset_settings(self) -> tuple[float, int]:
        """``(onset_threshold, onset_window_steps)`` of the hparams (0.25 and 3 by default).

        They place each evaluated clip's onset window (``lobes/onset.py``),
        whose pooled embedding the zero-shot prompts score as
        ``zeroshot_onset_accuracy``: which sound the clip opens with.
        """
        threshold = getattr(self.hparams, "onset_threshold", 0.25)
        window_steps = getattr(self.hparams, "onset_window_steps", 3)
        check_onset_settings(threshold, window_steps)
        return threshold, window_steps

    def _caption_prompt_scores(self, tokens, packed) -> torch.Tensor:
        """``(B, K)`` decoder log-likelihood of each zero-shot prompt opening each caption."""
        audio, audio_mask = unpack_tokens(tokens, packed.cu_seqlens)
        time_index = unpack_values(packed.pos_t, packed.cu_seqlens)
        decoder = _unwrap(self.modules.caption_decoder)
        prefixes = self.caption_prompt_ids.to(tokens.device)
        return decoder.prefix_log_likelihoods(audio, audio_mask, prefixes, time_index).cpu()

    def _packed_features(self, batch, stage):
        """Log-mel features (SpecAugment when training), packed into 16 x 16 patches."""
        wavs, wav_lens = pad_to_hop(*batch.sig)
        feats = self.modules.compute_features(wavs)
        if stage == sb.Stage.TRAIN:
            for augment in self.hparams.spec_augment or []:
                feats = augment(feats)
        return _unwrap(self.modules.audio_encoder).patchify(feats, wav_lens)

    def _training_inputs(self, batch):
        """The packed training batch and its SSL token mask (None without SSL).

        Every random draw of the audio side happens here, in one order
        (SpecAugment, then the mask), so the two passes of a gradient-cached
        micro-batch draw the same ones (``speechbrain_slap.gradient_cache``).
        """
        packed = self._packed_features(batch, sb.Stage.TRAIN)
        if self.hparams.loss_weights["ssl"] <= 0:
            return packed, None
        return packed, random_token_mask(packed, self.hparams.mask_ratio)

    def encoder_pad_to(self) -> int | None:
        """None (packed), or with ``packing: false`` the length every clip is padded to."""
        return None if getattr(self.hparams, "packing", True) else self.padded_length()

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
        self.clap_negatives = 0
        if "text_emb" in predictions:
            stats["clap"] = self.modules.clap_loss(
                predictions["audio_emb"], predictions["text_emb"]
            )
            self.clap_negatives = _unwrap(self.modules.clap_loss).last_global_batch
            total = total + weights["clap"] * stats["clap"]
        if "caption_logits" in predictions:
            stats["cap"] = caption_loss(
                predictions["caption_logits"],
                predictions["caption_targets"],
                self.hparams.pad_index,
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

    # -- compilation -------------------------------------------------------------
    # What --compile compiles unless compile_module_keys names others: the parts that
    # run over every token of the step. The audio encoders' blocks were measured
    # (benchmarks/README.md: packed encoder 30% -> 50% MFU on an H200); the text
    # encoder and the caption decoder are compiled on the same grounds (many small
    # kernels over every caption) but their gain on a GPU is not measured yet
    # (benchmarks/gpu_check.sh measures the whole step compiled vs eager).
    # Left eager: MAP pooling, prototype heads and losses (few matmuls, data-dependent
    # shapes, collectives inside), the features (STFT).
    COMPILED_MODULES = ("audio_encoder", "teacher", "text_encoder", "caption_decoder")

    def _compile(self):
        """SpeechBrain's compile step (``--compile``, ``compile: True``), done SLAP's way.

        SpeechBrain wraps whole modules in ``torch.compile``, with static
        shapes by default. A packed batch changes its token count every step
        (and captions their length), so static shapes would recompile at every
        step (``DESIGN.md`` Sec. 6), and the wrapper would add ``_orig_mod.``
        to the keys of every module's state. Here modules are compiled in
        place (``nn.Module.compile``: checkpoints keep their keys and load into
        eager models), with ``dynamic=True``, by their ``compile_blocks`` where
        they have one (the audio encoder's and the caption decoder's blocks,
        the text encoder's Hugging Face model, the teacher's audio encoder),
        else as a whole.

        Modules: ``compile_module_keys`` if given, else ``COMPILED_MODULES``
        (those of them that ``modules`` has). ``compile_mode`` and
        ``compile_using_fullgraph`` are passed on;
        ``compile_using_dynamic_shape_tracing`` is not used (always dynamic).
        This runs before DDP wraps the modules. ``--jit`` stays SpeechBrain's.
        """
        if self.compile:
            if self.compile_module_keys is None:
                keys = [key for key in self.COMPILED_MODULES if key in self.modules]
            else:
                keys = list(self.compile_module_keys)
            missing = [key for key in keys if key not in self.modules]
            if missing:
                raise ValueError(
                    f"compile_module_keys names {missing}, which are not in modules "
                    f"({sorted(self.modules)})"
                )
            options = {"mode": self.compile_mode, "fullgraph": self.compile_using_fullgraph}
            for key in keys:
                module = self.modules[key]
                if hasattr(module, "compile_blocks"):
                    module.compile_blocks(**options)
                else:
                    module.compile(dynamic=True, **options)
            logger.info("compiled in place (dynamic shapes): %s", ", ".join(keys) or "nothing")
        if self.jit:
            compile_flag, self.compile = self.compile, False
            try:
                super()._compile()
            finally:
                self.compile = compile_flag

    # -- optimisation ----------------------------------------------------------
    def fit_batch(self, batch):
        """SpeechBrain's ``fit_batch``; a batch with no usable item skips its step.

        With ``contrastive_gradient_cache: True``, ``fit_batch_cached`` instead.
        """
        self._note_bad_items(batch)
        if len(batch) == 0:
            return self._skip_empty_batch(batch)
        if self.gradient_cache:
            return self.fit_batch_cached(batch)
        return super().fit_batch(batch)

    @property
    def gradient_cache(self) -> bool:
        """Whether ``contrastive_gradient_cache`` is on (read at every batch)."""
        return bool(getattr(self.hparams, "contrastive_gradient_cache", False))

    def fit_batch_cached(self, batch):
        """``fit_batch`` with the contrastive gradient cache (``speechbrain_slap.gradient_cache``).

        Why ``fit_batch`` itself: SpeechBrain's runs forward and backward of
        each micro-batch as it arrives, but here no backward can start before
        the step's last micro-batch is embedded. Each call embeds its
        micro-batch without a graph and holds it; the call that ends the
        optimizer step (``should_step``, as SpeechBrain decides it) runs
        ``_cached_step`` and ``optimizers_step``. The hooks run at every call,
        as in ``Brain.fit_batch``; the loss (and the step log record) comes
        with the call that ends the step, the others return NaN, which
        ``update_average`` leaves out.
        """
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        self._clap_cache.append(self._embed_for_clap(batch))
        loss = torch.tensor(float("nan"))
        if should_step:
            loss = self._cached_step()
            self.optimizers_step()
        self.on_fit_batch_end(batch, None, loss, should_step)
        return loss.detach().cpu()

    def _embed_for_clap(self, batch) -> CachedMicroBatch:
        """First pass: the micro-batch's CLAP embeddings, without a graph.

        It draws what ``compute_forward`` draws, in its order, from the seed
        both passes use; the student sees view 1 only (unmasked, or masked for
        ``ssl_view: shared``). The modules are called unwrapped: a DDP forward
        would broadcast buffers and prepare a backward that never comes.
        """
        seed = draw_seed()
        batch = batch.to(self.device)
        with replayed_rng(seed, self.device), torch.no_grad(), self.training_ctx:
            packed, token_mask = self._training_inputs(batch)
            view1_mask = token_mask if self.hparams.ssl_view == "shared" else None
            tokens = _unwrap(self.modules.audio_encoder)(
                packed, token_mask=view1_mask, pad_to=self.encoder_pad_to()
            )
            audio_emb = _unwrap(self.modules.audio_pooling)(tokens, cu_seqlens=packed.cu_seqlens)
            text_emb = _unwrap(self.modules.text_encoder)(list(batch.caption))
        return CachedMicroBatch(batch, seed, audio_emb, text_emb)

    def _cached_step(self) -> torch.Tensor:
        """CLAP over the held micro-batches, then the second pass of each; the step's loss.

        The CLAP loss over every held clip (gathered over the ranks) gives the
        gradient of each micro-batch's embeddings; each micro-batch then runs
        ``compute_forward`` again (same seed, so the same SpecAugment, token
        mask and dropout) and back-propagates those gradients with its own SSL
        and captioning losses (divided by the accumulation factor, as
        SpeechBrain divides). DDP synchronises gradients on the last
        micro-batch only (``no_sync``). A non-finite CLAP loss or micro-batch
        loss marks the step for skipping (``optimizers_step``).
        """
        cache, self._clap_cache = self._clap_cache, []
        weights = self.hparams.loss_weights
        clap_loss = _unwrap(self.modules.clap_loss)
        clap, gradients = contrastive_gradients(
            clap_loss,
            [micro.audio_emb for micro in cache],
            [micro.text_emb for micro in cache],
            weight=weights["clap"],
            scale=self.scaler.scale,
        )
        self.check_loss_isfinite(clap)
        if sb.utils.distributed.is_distributed_initialized():
            # Every rank computed the same global loss; averaging keeps the logit
            # scales bit-identical whatever the ranks' rounding (the DDP wrapper
            # of clap_loss, which would average it, is not called here).
            grad = clap_loss.logit_scale.grad
            torch.distributed.all_reduce(grad)
            grad /= torch.distributed.get_world_size()
        stats, tokens = [], 0
        others = torch.zeros((), device=self.device)
        for index, (micro, (audio_grad, text_grad)) in enumerate(
            zip(cache, gradients, strict=True)
        ):
            with self.no_sync(index < len(cache) - 1), replayed_rng(micro.seed, self.device):
                with self.training_ctx:
                    predictions = self.compute_forward(micro.batch, sb.Stage.TRAIN)
                    audio_emb = predictions.pop("audio_emb")
                    text_emb = predictions.pop("text_emb")
                    loss = self.compute_objectives(predictions, micro.batch, sb.Stage.TRAIN)
                self.check_loss_isfinite(loss)
                (
                    self.scaler.scale(loss / self.grad_accumulation_factor)
                    + cached_gradient_product(audio_emb, audio_grad)
                    + cached_gradient_product(text_emb, text_grad)
                ).backward()
            stats.append(self.loss_stats)
            tokens += self.batch_tokens
            others = others + loss.detach() / len(cache)
        self.loss_stats = {"clap": float(clap)}
        for key in stats[0]:
            self.loss_stats[key] = sum(s[key] for s in stats) / len(stats)
        self.batch_tokens = tokens
        self.clap_negatives = clap_loss.last_global_batch
        return weights["clap"] * clap + others

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
            self._clap_cache = []  # with the gradient cache: its held micro-batches
            self._busy_seconds = 0.0
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

    def init_optimizers(self):
        """SpeechBrain's one optimizer over all modules; ``lr_scales`` splits it in groups.

        ``hparams.lr_scales`` (optional, ``{module name: factor}``, names of
        ``modules``) gives each named module's parameters a group of their
        own whose learning rate is the schedule's times the factor
        (``WarmupCosineLR`` reads the group's ``lr_scale``); all other
        parameters form the first group, at the schedule's rate. Empty or
        absent: one group, as SpeechBrain builds it.
        """
        scales = dict(getattr(self.hparams, "lr_scales", None) or {})
        if not scales or self.opt_class is None:
            return super().init_optimizers()
        unknown = sorted(set(scales) - set(self.modules.keys()))
        if unknown:
            raise ValueError(
                f"lr_scales names {unknown}, which are not modules; "
                f"expected some of {sorted(self.modules.keys())}"
            )
        if self.remove_vector_weight_decay:
            raise ValueError("lr_scales and remove_vector_weight_decay cannot be combined")
        seen, groups = set(), []
        for name, factor in scales.items():
            try:
                factor = float(factor)
            except (TypeError, ValueError):
                factor = math.nan
            if not math.isfinite(factor) or factor <= 0:
                raise ValueError(
                    f"lr_scales.{name} must be a positive number, got {scales[name]!r}"
                )
            params = [p for p in self.modules[name].parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            groups.append({"params": params, "lr_scale": factor})
        rest = [p for p in self.modules.parameters() if id(p) not in seen]
        self.optimizer = self.opt_class([{"params": rest}, *groups])
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

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
        """EMA update after each optimizer step that was taken; step logging.

        A record covers one ``fit_batch`` call, or with the gradient cache
        one optimizer step (its calls' time summed). ``clap_negatives``: the
        clips the CLAP loss contrasted (over all ranks and, with the cache,
        all micro-batches of the step). Written to ``train_steps.jsonl``
        every ``log_interval`` batches (every batch under ``--debug``).
        """
        if should_step and not self._step_skipped:
            self.current_momentum = self.modules.teacher.update(
                {k: self.modules[k] for k in ("audio_encoder", "ssl_head")}
            )
        self._busy_seconds += time.perf_counter() - self._step_start
        batches = self.grad_accumulation_factor if self.gradient_cache else 1
        if self.gradient_cache and not should_step:
            return  # the step's record comes with its last micro-batch
        elapsed, self._busy_seconds = max(self._busy_seconds, 1e-9), 0.0
        if not torch.isfinite(loss):
            return  # counted and logged as a skipped step; kept out of the averages
        record = {
            "step": self.optimizer_step,
            "loss": float(loss.detach()),
            **{f"loss_{k}": v for k, v in self.loss_stats.items()},
            "clap_negatives": self.clap_negatives,
            "logit_scale": float(_unwrap(self.modules.clap_loss).scale.detach()),
            "ema_momentum": getattr(self, "current_momentum", None),
            "lr": getattr(self, "current_lr", None),
            "tokens_per_s": round(self.batch_tokens / elapsed, 1),
            "teacher_temp": self.teacher_temp,
        }
        self.step_log.append(record)
        # Logged when a multiple of the interval falls among the batches of the record.
        interval = 1 if self.debug else self.hparams.log_interval
        logged = self.step // interval > (self.step - batches) // interval
        if sb.utils.distributed.if_main_process() and logged:
            with open(self._steps_file, "a") as fout:
                fout.write(json.dumps(record) + "\n")

    def _log_epoch(self, epoch, valid_metrics: dict, monitor: dict):
        """Appends the epoch's retrieval metrics to ``train_epochs.jsonl`` (with its last step)."""
        if not sb.utils.distributed.if_main_process():
            return
        record = {"step": self.optimizer_step, "epoch": epoch}
        for key in (
            "t2a_R@1",
            "a2t_R@1",
            "mean_R@1",
            "zeroshot_accuracy",
            "zeroshot_onset_accuracy",
        ):
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
        self.batch_tokens = self.clap_negatives = 0
        self._busy_seconds = 0.0
        self._clap_cache = []
        if self.gradient_cache and self.hparams.loss_weights["clap"] <= 0:
            raise ValueError(
                "contrastive_gradient_cache: True caches the CLAP loss's gradients, but "
                "loss_weights.clap is 0: set the weight or turn the cache off"
            )
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
            # Micro-batches held by a step the last epoch left unfinished (its
            # batch count was not a multiple of the accumulation factor) are
            # dropped, as SpeechBrain drops their accumulated gradients.
            self._clap_cache = []
            self._busy_seconds = 0.0
        else:
            self.eval_audio, self.eval_captions, self.eval_labels = [], [], []
            self.eval_caption_scores, self.eval_onset = [], []

    def evaluate_batch(self, batch, stage):
        """SpeechBrain's ``evaluate_batch``; items that could not be read are left out."""
        self._note_bad_items(batch)
        if len(batch) == 0:
            return torch.zeros(())
        return super().evaluate_batch(batch, stage)

    def _collect_eval(self, predictions, batch):
        self.eval_audio.append(predictions["audio_emb"].float().cpu())
        if "onset_emb" in predictions:
            self.eval_onset.append(predictions["onset_emb"].float().cpu())
        self.eval_captions.extend(split_captions(c) for c in batch.captions)
        if "caption_prompt_scores" in predictions:
            self.eval_caption_scores.append(predictions["caption_prompt_scores"])
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

        kept = (self.eval_audio, self.eval_captions, self.eval_labels, self.eval_onset)
        self.eval_audio, self.eval_captions, self.eval_labels, self.eval_onset = [], [], [], []
        kwargs = loader_kwargs(monitor, {**vars(self.hparams), "num_workers": 0}, train=False)
        for batch in torch.utils.data.DataLoader(monitor, **kwargs):
            if len(batch):
                self._collect_eval(self.compute_forward(batch, sb.Stage.VALID), batch)
        metrics, _, _ = self.evaluate_retrieval()
        self.eval_audio, self.eval_captions, self.eval_labels, self.eval_onset = kept
        return {f"train_{key}": value for key, value in metrics.items()}

    def evaluate_retrieval(self):
        """Retrieval metrics (all captions of each clip) over the collected stage.

        With zero-shot labels, ``zeroshot_accuracy`` covers the clips whose
        ``sound_type`` is a zero-shot class (absent when none is);
        ``zeroshot_unlabelled`` counts the others. With ``caption_prompt_ids``,
        the test stage's ``zeroshot_caption_accuracy`` scores the same clips by
        the caption decoder (the prompt likeliest to open the clip's caption).
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
                if getattr(self, "eval_onset", None):
                    onset = torch.nn.functional.normalize(torch.cat(self.eval_onset), dim=-1)
                    metrics["zeroshot_onset_accuracy"] = zero_shot_accuracy(
                        onset[labelled] @ prompts.T, labels[labelled]
                    )
                if getattr(self, "eval_caption_scores", None):
                    scores = torch.cat(self.eval_caption_scores)
                    metrics["zeroshot_caption_accuracy"] = zero_shot_accuracy(
                        scores[labelled], labels[labelled]
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
