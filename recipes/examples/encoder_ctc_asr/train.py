#!/usr/bin/env python3
"""Example: character CTC ASR on the SLAP audio encoder, frozen or fine-tuned.

The Brain is that of SpeechBrain's CTC recipes (encoder -> DNN -> linear ->
log-softmax, ``ctc_loss``, greedy CTC decoding, ``ErrorRateStats`` for WER and
CER), with the acoustic encoder replaced by SLAP. SLAP's time step is 160 ms,
too coarse for characters, so ``SLAPFrameEncoder(bands="concat")`` keeps each
step's four frequency tokens side by side and ``SubstepProjection`` splits the
step into eight 20 ms steps with a learned projection (README: why). The
encoder weights come from a SLAP model folder through SpeechBrain's
``Pretrainer``, or start random; ``freeze_encoder`` chooses between a frozen
feature extractor and fine-tuning. The speech is generated with eSpeak NG
(``generate_data.py``; ``pip install speechbrain-slap[asr]``). The test stage
writes ``test_results.json`` with ``CER`` and ``WER`` (percent).

    python train.py hparams/ctc_char.yaml --pretrained_model=MODEL_FOLDER
    python train.py hparams/ctc_char.yaml --pretrained_model= --freeze_encoder=False

Authors
 * speechbrain-slap contributors 2026
"""

import json
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


class CTCBrain(sb.Brain):
    """Character CTC on SLAP sub-step features."""

    def compute_forward(self, batch, stage):
        """CTC log-probabilities ``(B, T' * substeps, n_tokens)`` and their relative lengths."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        # With the batch a multiple of the STFT hop, relative lengths map to
        # exact frame counts: a clip gives the same frames in any batch.
        wavs, wav_lens = pad_to_hop(wavs, wav_lens, self.hparams.compute_features.hop_samples)
        feats = self.modules.compute_features(wavs)
        steps = self.modules.frame_encoder(feats, wav_lens)  # (B, T', 4 * D), 160 ms rows
        step_lens = self.modules.frame_encoder.output_lengths(feats, wav_lens)
        substeps = self.modules.substep_projection(steps)  # (B, 8 T', H), 20 ms rows
        logits = self.modules.ctc_lin(self.modules.enc(substeps))
        # Sub-steps scale every clip's length and the batch's by the same factor.
        return self.hparams.log_softmax(logits), step_lens

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss; greedy decoding and WER / CER outside training."""
        p_ctc, lens = predictions
        tokens, tokens_lens = batch.tokens
        loss = self.hparams.ctc_cost(p_ctc, tokens, lens, tokens_lens)
        if stage != sb.Stage.TRAIN:
            sequences = sb.decoders.ctc_greedy_decode(
                p_ctc, lens, blank_id=self.hparams.blank_index
            )
            predicted_words = [
                "".join(self.label_encoder.decode_ndim(sequence)).split() for sequence in sequences
            ]
            target_words = [words.split() for words in batch.wrd]
            self.wer_metric.append(batch.id, predicted_words, target_words)
            self.cer_metric.append(batch.id, predicted_words, target_words)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Fresh WER and CER trackers for each evaluation stage."""
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.wer_computer()
            self.cer_metric = self.hparams.cer_computer()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, anneals the learning rate, keeps the best checkpoint by CER, writes results."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {
            "loss": stage_loss,
            "CER": self.cer_metric.summarize("error_rate"),
            "WER": self.wer_metric.summarize("error_rate"),
        }
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(epoch)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta=stats, min_keys=["CER"])
            return
        self.hparams.train_logger.log_stats(
            stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
            test_stats=stats,
        )
        if sb.utils.distributed.if_main_process():
            with open(self.hparams.test_wer_file, "w") as fout:
                self.wer_metric.write_stats(fout)
            results = {
                "CER": stats["CER"],
                "WER": stats["WER"],
                "loss": stats["loss"],
                "utterances": len(self.cer_metric.scores),
                "epoch": self.hparams.epoch_counter.current,
                "freeze_encoder": self.hparams.freeze_encoder,
                "pretrained_model": self.hparams.pretrained_model or None,
            }
            Path(self.hparams.test_results_file).write_text(json.dumps(results, indent=2) + "\n")


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


def dataio_prepare(hparams: dict):
    """Audio and character pipelines of the train/valid/test manifests.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    datasets : dict
        Split name -> ``DynamicItemDataset`` with ``id``, ``sig``, ``wrd``, ``tokens``.
    label_encoder : speechbrain.dataio.encoder.CTCTextEncoder
        Blank (``blank_index``), space and the characters of the training transcripts.
    """

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    label_encoder = sb.dataio.encoder.CTCTextEncoder()

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "char_list", "tokens")
    def text_pipeline(wrd):
        yield wrd
        char_list = list(wrd)
        yield char_list
        yield torch.LongTensor(label_encoder.encode_sequence(char_list))

    datasets = {}
    for split in ("train", "valid", "test"):
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=hparams[f"{split}_csv"],
            replacements={"data_root": hparams["data_folder"]},
            dynamic_items=[audio_pipeline, text_pipeline],
            output_keys=["id", "sig", "wrd", "tokens"],
        )
    label_encoder.load_or_create(
        path=Path(hparams["save_folder"]) / "label_encoder.txt",
        from_didatasets=[datasets["train"]],
        output_key="char_list",
        special_labels={"blank_label": hparams["blank_index"]},
        sequence_input=True,
    )
    if len(label_encoder) > hparams["output_neurons"]:
        raise ValueError(
            f"the training transcripts have {len(label_encoder)} labels with the blank, more "
            f"than output_neurons = {hparams['output_neurons']}"
        )
    label_encoder.ignore_len()  # checked just above: fewer labels than outputs is fine
    return datasets, label_encoder


if __name__ == "__main__":
    hparams, run_opts, hparams_file, overrides = load_hparams(sys.argv[1:])

    from generate_data import generate_speech_data  # beside this script

    run_on_main(
        generate_speech_data,
        kwargs={
            "data_folder": hparams["data_folder"],
            "seed": hparams["data_seed"],
            "n_train": hparams["n_train"],
            "n_valid": hparams["n_valid"],
            "n_test": hparams["n_test"],
            "sample_rate": hparams["sample_rate"],
        },
    )
    datasets, label_encoder = dataio_prepare(hparams)
    load_pretrained_encoder(hparams, hparams_file, overrides)

    brain = make_brain(CTCBrain, hparams, run_opts)
    brain.label_encoder = label_encoder
    brain.fit(
        epoch_counter=brain.hparams.epoch_counter,
        train_set=datasets["train"],
        valid_set=datasets["valid"],
        train_loader_kwargs=hparams["dataloader_options"],
        valid_loader_kwargs=hparams["test_dataloader_options"],
    )
    brain.evaluate(
        test_set=datasets["test"],
        min_key="CER",
        test_loader_kwargs=hparams["test_dataloader_options"],
    )
