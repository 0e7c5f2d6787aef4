"""What the recipe scripts share: their yaml, the start from a model folder, the schedules' length.

A recipe's ``train.py`` or ``evaluate.py`` reads top to bottom as
SpeechBrain's do; the steps that are the same in every one live here:

* ``load_hparams``: parse the command line, load the yaml with the
  architecture of the model folder it starts from (``--pretrained_model``,
  ``architecture_overrides``: no need to restate the model on the command
  line), join the DDP group and create the experiment folder;
* ``init_from_model_folder``: every module the yaml's ``pretrainer`` names
  loaded strictly from that folder (and its caption tokenizer, when the
  recipe keeps the captioning loss), or a warning when training from scratch;
* ``set_total_steps``: the optimizer steps a run makes, which the learning
  rate schedule and the EMA teacher span (per rank under DDP);
* ``make_brain`` and ``finetune``: the Brain of a yaml, and the fine-tuning
  loop of the AudioCaps, Clotho and WavCaps recipes (fit with validation,
  test the best checkpoint, export it as a model folder).

Authors
 * speechbrain-slap contributors 2026
"""

import io
import logging
import math
from pathlib import Path

from ruamel.yaml import YAML

logger = logging.getLogger(__name__)


def load_hparams(argv: list[str]) -> tuple[dict, dict, str, str]:
    """Parses a recipe's command line and loads its yaml; creates the experiment folder.

    When the recipe starts from a model folder (``pretrained_model``, given on
    the command line or in the yaml), the folder's architecture values become
    overrides of the yaml's keys of the same names; values given on the command
    line win. The saved ``<output_folder>/hyperparams.yaml`` holds them all.

    Arguments
    ---------
    argv : list of str
        ``sys.argv[1:]``: the yaml, then SpeechBrain's options and overrides.

    Returns
    -------
    hparams : dict
        The loaded yaml.
    run_opts : dict
        SpeechBrain's run options.
    hparams_file : str
        The yaml.
    overrides : str
        The overrides it was loaded with (YAML text).
    """
    import speechbrain as sb
    from hyperpyyaml import load_hyperpyyaml

    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    overrides = with_model_folder_architecture(hparams_file, overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return hparams, run_opts, hparams_file, overrides


def with_model_folder_architecture(hparams_file: str | Path, overrides: str | None) -> str:
    """``overrides`` plus the architecture of the yaml's ``pretrained_model`` folder.

    Arguments
    ---------
    hparams_file : str or Path
        The recipe yaml.
    overrides : str, optional
        The command-line overrides (YAML text, as ``sb.parse_arguments`` gives them).

    Returns
    -------
    str
        YAML text: the folder's values (``architecture_overrides``) updated
        with ``overrides``.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "model").mkdir()
    >>> _ = (folder / "model" / "hyperparams.yaml").write_text("embed_dim: 64\\ndepth: 3\\n")
    >>> _ = (folder / "r.yaml").write_text("pretrained_model: null\\nembed_dim: 768\\ndepth: 12\\n")
    >>> print(with_model_folder_architecture(folder / "r.yaml",
    ...                                      f"pretrained_model: {folder}/model\\ndepth: 4"))
    embed_dim: 64
    depth: 4
    pretrained_model: .../model
    <BLANKLINE>
    """
    from speechbrain_slap.model_folder import architecture_overrides

    yaml = YAML()
    given = yaml.load(overrides or "") or {}
    folder = given.get("pretrained_model")
    if "pretrained_model" not in given:
        with open(hparams_file, encoding="utf-8") as fin:
            folder = (yaml.load(fin) or {}).get("pretrained_model")
    if not isinstance(folder, str) or not folder or not Path(folder).is_dir():
        return overrides or ""
    merged = architecture_overrides(folder, hparams_file)
    if merged:
        logger.info("architecture of %s: %s", folder, dict(merged))
    merged.update(given)
    stream = io.StringIO()
    yaml.dump(merged, stream)
    return stream.getvalue()


def init_from_model_folder(hparams: dict, encoder_yaml: tuple | None = None):
    """Initialises the yaml's modules from its ``pretrained_model`` folder (if one is given).

    Every loadable of ``hparams["pretrainer"]`` is loaded strictly from the
    folder (``speechbrain_slap.model_folder.load_pretrained``); with
    ``tokenizer_folder`` and ``vocab_size`` in the yaml, the folder's caption
    tokenizer is used, and an EMA ``teacher`` restarts its momentum schedule
    over the new run's steps.

    Arguments
    ---------
    hparams : dict
        The loaded yaml: ``pretrained_model`` (None or empty: from scratch) and
        ``pretrainer``.
    encoder_yaml : tuple, optional
        ``(hparams_file, overrides)`` of a yaml that defines its own features
        and encoder: they are checked against the folder's first
        (``speechbrain_slap.model_folder.check_encoder_matches``), since some
        differences (``num_heads``, feature statistics) load without error.

    Returns
    -------
    speechbrain.tokenizers.SentencePiece.SentencePiece or None
        The folder's caption tokenizer, when the yaml has a ``tokenizer_folder``.
    """
    from speechbrain_slap.model_folder import check_encoder_matches, load_pretrained

    folder = hparams["pretrained_model"]
    if not folder:
        frozen = " (and a frozen encoder stays random)" if hparams.get("freeze_encoder") else ""
        logger.warning("pretrained_model is empty: training from scratch%s", frozen)
        return None
    if encoder_yaml is not None:
        check_encoder_matches(*encoder_yaml, folder)
    tokenizer = load_pretrained(
        hparams["pretrainer"],
        folder,
        tokenizer_folder=hparams.get("tokenizer_folder"),
        vocab_size=hparams.get("vocab_size"),
    )
    if "teacher" in hparams:
        hparams["teacher"].step.zero_()  # the EMA schedule spans the new run's steps
    return tokenizer


def batches_per_rank(batches: int) -> int:
    """The share of an epoch's ``batches`` each DDP rank trains on (all of them without DDP).

    Example
    -------
    >>> batches_per_rank(10)
    10
    """
    import torch

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world_size = torch.distributed.get_world_size() if distributed else 1
    return math.ceil(batches / world_size)


def set_total_steps(
    hparams: dict,
    batches_per_epoch: int,
    grad_accumulation_factor: int = 1,
    schedules: tuple[str, ...] = ("lr_schedule", "teacher"),
) -> int:
    """Sets the length of the yaml's schedules to the run's optimizer steps.

    Arguments
    ---------
    hparams : dict
        The loaded yaml (``number_of_epochs`` and the ``schedules`` it has).
    batches_per_epoch : int
        Batches one rank trains on per epoch.
    grad_accumulation_factor : int
        Batches per optimizer step.
    schedules : tuple of str
        Keys of objects with a ``total_steps`` (learning rate, EMA momentum).

    Returns
    -------
    int
        The optimizer steps (at least 1).

    Example
    -------
    >>> from speechbrain_slap.schedulers import WarmupCosineLR
    >>> hparams = {"number_of_epochs": 3, "lr_schedule": WarmupCosineLR(lr=0.1, warmup_steps=1)}
    >>> set_total_steps(hparams, batches_per_epoch=10, grad_accumulation_factor=4)
    7
    >>> hparams["lr_schedule"].total_steps
    7
    """
    steps = max(batches_per_epoch * hparams["number_of_epochs"] // grad_accumulation_factor, 1)
    for key in schedules:
        if key in hparams:
            hparams[key].total_steps = steps
    return steps


def make_brain(brain_class, hparams: dict, run_opts: dict):
    """The recipe's Brain: ``brain_class`` with the yaml's modules, optimizer and checkpointer.

    Arguments
    ---------
    brain_class : type
        A ``speechbrain.Brain`` subclass.
    hparams : dict
        The loaded yaml (``modules``, ``opt_class``, ``checkpointer``).
    run_opts : dict
        SpeechBrain's run options.

    Returns
    -------
    speechbrain.Brain
        Under ``--debug`` its checkpoints go to the yaml's checkpointer folder,
        not a temporary one (``brain.persistent_debug_checkpoints``), so
        ``slap export`` works on a debug run's output.
    """
    from speechbrain_slap.brain import persistent_debug_checkpoints

    return brain_class(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=persistent_debug_checkpoints(run_opts),
        checkpointer=hparams["checkpointer"],
    )


def finetune(brain, hparams: dict, datasets: dict):
    """Trains a ``SLAPBrain``, tests its best checkpoint and exports it: the fine-tuning loop.

    The schedules (learning rate, EMA momentum) span the run's optimizer steps
    (``set_total_steps``); retrieval on ``datasets["valid"]`` after each epoch
    keeps the checkpoint with the best mean R@1, which is then evaluated on
    ``datasets["test"]`` (``test_results.json`` in the output folder) and
    exported to ``hparams["model_folder"]``. Batches are
    ``speechbrain_slap.data.pipelines.loader_kwargs``'s: duration batches from
    which unreadable clips are dropped and counted.

    Arguments
    ---------
    brain : speechbrain_slap.brain.SLAPBrain
        The Brain, built from ``hparams``.
    hparams : dict
        The loaded recipe yaml (``SLAPBrain``'s keys, ``lr_schedule``,
        ``teacher``, ``epoch_counter``, ``number_of_epochs``, ``output_folder``,
        ``model_folder`` and ``loader_kwargs``'s keys).
    datasets : dict
        ``train``, ``valid`` and ``test`` datasets
        (``speechbrain_slap.data.pipelines.dataio_prepare``).

    Returns
    -------
    speechbrain_slap.brain.SLAPBrain
        The trained Brain (its ``checkpointer`` holds the best checkpoint).
    """
    from speechbrain.utils.distributed import run_on_main

    from speechbrain_slap.data.pipelines import loader_kwargs
    from speechbrain_slap.model_folder import export_model, find_best_checkpoint

    train_kwargs = loader_kwargs(datasets["train"], hparams, train=True)
    batches = batches_per_rank(len(train_kwargs["batch_sampler"]))
    set_total_steps(hparams, batches, brain.grad_accumulation_factor)
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=train_kwargs,
        valid_loader_kwargs=loader_kwargs(datasets["valid"], hparams, train=False),
    )
    brain.evaluate(
        datasets["test"],
        max_key="mean_R@1",
        test_loader_kwargs=loader_kwargs(datasets["test"], hparams, train=False),
    )
    run_on_main(
        export_model,
        kwargs={
            "output_folder": hparams["output_folder"],
            "model_folder": hparams["model_folder"],
            "checkpoint": find_best_checkpoint(brain.checkpointer.checkpoints_dir),
            "overwrite": True,
        },
    )
    return brain
