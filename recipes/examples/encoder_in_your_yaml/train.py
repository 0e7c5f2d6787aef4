#!/usr/bin/env python3
"""Example: a SLAP encoder as the feature extractor of an emotion-style recipe.

The Brain is that of SpeechBrain's emotion recognition recipes (features ->
embedding model -> classifier, NLL loss, classification error), with the
embedding model replaced by SLAP: ``SLAPFrameEncoder`` turns the log-mels of
``SLAPFbank`` into time-step features ``(B, T', D)``, statistics pooling over
their relative lengths makes one vector per clip and a linear layer classifies
it. The encoder weights come from a SLAP model folder through SpeechBrain's
``Pretrainer``; ``freeze_encoder`` chooses between a frozen feature extractor
and fine-tuning. The task is generated (``generate_data.py``): four speaking
styles told apart only by the pitch contour.

    python train.py hparams/emotion_style.yaml --pretrained_model=MODEL_FOLDER
    python train.py hparams/emotion_style.yaml --pretrained_model=MODEL_FOLDER \
        --freeze_encoder=False

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.data.audio import load_audio
from speechbrain_slap.lobes.features import pad_to_hop
from speechbrain_slap.recipe import init_from_model_folder, load_hparams, make_brain

logger = logging.getLogger(__name__)


class StyleBrain(sb.Brain):
    """Speaking-style classifier on SLAP frame features."""

    def compute_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        """SLAP time-step features of a padded waveform batch.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` waveforms, padded to the longest (``PaddedBatch``).
        wav_lens : torch.Tensor
            ``(B,)`` relative lengths.

        Returns
        -------
        frames : torch.Tensor
            ``(B, T', D)`` time-step features, zero past each clip's end.
        frame_lens : torch.Tensor
            ``(B,)`` exact relative lengths of ``frames``.
        """
        # With the batch a multiple of the STFT hop, relative lengths map to
        # exact frame counts: a clip gives the same frames in any batch.
        wavs, wav_lens = pad_to_hop(wavs, wav_lens, self.hparams.compute_features.hop_samples)
        feats = self.modules.compute_features(wavs)
        frames = self.modules.frame_encoder(feats, wav_lens)
        return frames, self.modules.frame_encoder.output_lengths(feats, wav_lens)

    def compute_forward(self, batch, stage):
        """Log-probabilities ``(B, 1, n_classes)`` of each clip's style."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        frames, frame_lens = self.compute_frames(wavs, wav_lens)
        stats = self.modules.pooling(frames, frame_lens)  # mean and std over real steps
        return self.hparams.log_softmax(self.modules.classifier(stats))

    def compute_objectives(self, predictions, batch, stage):
        """NLL loss; error rate outside training."""
        style, _ = batch.style_encoded
        loss = self.hparams.compute_cost(predictions, style)
        if stage != sb.Stage.TRAIN:
            self.error_metrics.append(batch.id, predictions, style)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """A fresh error tracker for each evaluation stage."""
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.hparams.error_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, anneals the learning rate and keeps the best checkpoint by error rate."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss, "error_rate": self.error_metrics.summarize("average")}
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(epoch)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta=stats, min_keys=["error_rate"])
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )


def load_pretrained_encoder(hparams: dict, hparams_file: str | Path, overrides: str | dict | None):
    """Loads the encoder weights of ``pretrained_model`` (if one is given), checked first.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters (``pretrained_model``, ``pretrainer``).
    hparams_file : str or Path
        The yaml they were loaded from (its encoder must be the folder's).
    overrides : str or dict or None
        The overrides they were loaded with.
    """
    init_from_model_folder(hparams, encoder_yaml=(hparams_file, overrides))


def dataio_prepare(hparams: dict) -> dict:
    """Audio and label pipelines of the train/valid/test manifests.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    dict
        Split name -> ``DynamicItemDataset`` with ``id``, ``sig``, ``style_encoded``.
    """

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("style")
    @sb.utils.data_pipeline.provides("style", "style_encoded")
    def label_pipeline(style):
        yield style
        yield label_encoder.encode_label_torch(style)

    datasets = {}
    for split in ("train", "valid", "test"):
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=hparams[f"{split}_csv"],
            replacements={"data_root": hparams["data_folder"]},
            dynamic_items=[audio_pipeline, label_pipeline],
            output_keys=["id", "sig", "style_encoded"],
        )
    label_encoder.load_or_create(
        path=Path(hparams["save_folder"]) / "label_encoder.txt",
        from_didatasets=[datasets["train"]],
        output_key="style",
    )
    label_encoder.expect_len(hparams["n_classes"])
    return datasets


if __name__ == "__main__":
    hparams, run_opts, hparams_file, overrides = load_hparams(sys.argv[1:])

    from generate_data import generate_style_data  # beside this script

    run_on_main(
        generate_style_data,
        kwargs={
            "data_folder": hparams["data_folder"],
            "seed": hparams["data_seed"],
            "n_train": hparams["n_train"],
            "n_valid": hparams["n_valid"],
            "n_test": hparams["n_test"],
            "min_duration": hparams["min_duration"],
            "max_duration": hparams["max_duration"],
            "sample_rate": hparams["sample_rate"],
        },
    )
    datasets = dataio_prepare(hparams)
    load_pretrained_encoder(hparams, hparams_file, overrides)

    brain = make_brain(StyleBrain, hparams, run_opts)
    brain.fit(
        epoch_counter=brain.hparams.epoch_counter,
        train_set=datasets["train"],
        valid_set=datasets["valid"],
        train_loader_kwargs=hparams["dataloader_options"],
        valid_loader_kwargs=hparams["test_dataloader_options"],
    )
    brain.evaluate(
        test_set=datasets["test"],
        min_key="error_rate",
        test_loader_kwargs=hparams["test_dataloader_options"],
    )
