"""``speechbrain_slap.recipe``: a recipe started from a model folder builds the folder's model.

The fine-tuning yaml of Clotho describes the paper's base model; given only
``--pretrained_model`` (the session's tiny folder), it must build the tiny
model and load every module of its pretrainer strictly from the folder.
"""

from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_slap.recipe import init_from_model_folder, set_total_steps
from speechbrain_slap.recipe import with_model_folder_architecture as with_architecture

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "recipes" / "Clotho" / "retrieval" / "hparams" / "finetune.yaml"


def test_finetune_yaml_takes_the_architecture_of_the_folder(slap_model_folder, tmp_path):
    paths = f"pretrained_model: {slap_model_folder}\ndata_folder: {tmp_path}\n"
    overrides = with_architecture(FINETUNE, paths + f"output_folder: {tmp_path / 'out'}")
    with open(FINETUNE) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    assert (hparams["embed_dim"], hparams["depth"], hparams["vocab_size"]) == (64, 3, 80)
    assert len(hparams["audio_encoder"].blocks) == 3
    # One module per reference: the included encoder is the one trained and checkpointed.
    encoder = hparams["architecture"]["audio_encoder"]
    assert encoder is hparams["audio_encoder"] is hparams["modules"]["audio_encoder"]
    assert hparams["checkpointer"].recoverables["audio_encoder"] is encoder

    tokenizer = init_from_model_folder(hparams)
    assert tokenizer.sp.get_piece_size() == 80
    for name in ("audio_encoder", "caption_decoder", "ssl_head"):
        state = torch.load(slap_model_folder / f"{name}.ckpt", weights_only=True)
        loaded = hparams[name].state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), name


def test_command_line_values_win_over_the_folder(slap_model_folder):
    overrides = with_architecture(FINETUNE, f"pretrained_model: {slap_model_folder}\ndepth: 5")
    assert "depth: 5" in overrides and "embed_dim: 64" in overrides
    assert with_architecture(FINETUNE, "depth: 5") == "depth: 5"  # no folder: unchanged


def test_total_steps_span_the_run():
    class Schedule:
        total_steps = 0

    hparams = {"number_of_epochs": 4, "lr_schedule": Schedule(), "teacher": Schedule()}
    assert set_total_steps(hparams, batches_per_epoch=10, grad_accumulation_factor=3) == 13
    assert hparams["lr_schedule"].total_steps == hparams["teacher"].total_steps == 13
    assert set_total_steps({"number_of_epochs": 1}, batches_per_epoch=0) == 1


def test_no_recipe_yaml_defines_the_encoder_itself():
    """The architecture is defined once, in speechbrain_slap/hparams/."""
    for path in sorted((REPO / "recipes").glob("**/hparams/*.yaml")):
        assert "!new:speechbrain_slap.lobes.audio_encoder.SLAPAudioEncoder" not in path.read_text()
