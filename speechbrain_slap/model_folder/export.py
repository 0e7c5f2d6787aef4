"""Writing model folders: a SLAP folder from a recipe output, a tagging folder from a tagging Brain.

Both kinds are written by the same code (``write_folder``: weight files,
``hyperparams.yaml``, ``SHA256SUMS`` of every file, one ``model_card``).

A **SLAP model folder** (``export_model``, ``slap export``), loaded by
``speechbrain_slap.inference.SLAP`` (``speechbrain_slap.model_folder.load_slap``)::

    hyperparams.yaml      the architecture values and model definitions of the training
                          yaml, verbatim, plus ``modules``, ``tokenizer`` and ``pretrainer``
    audio_encoder.ckpt    state dicts (``torch.save``) of the student encoder,
    audio_pooling.ckpt    the audio MAP, the text encoder, the caption decoder
    text_encoder.ckpt     and the CLAP loss (its learned logit scale)
    caption_decoder.ckpt
    clap_loss.ckpt
    tokenizer.ckpt        the caption SentencePiece model
    text_encoder/         the text encoder's Hugging Face files (config.json, the
                          tokenizer files, model.safetensors): what builds it before
                          text_encoder.ckpt loads, so nothing is fetched from the hub
                          or another package
    ssl_head.ckpt         the SSL prototype head and the EMA teacher: not used
    teacher.ckpt          for inference, kept so fine-tuning continues all three losses
    SHA256SUMS            ``<sha256>  <file>`` for every file
    README.md             model card: data, architecture, test metrics, usage

The inference yaml is not written by hand: the definitions of ``MODEL_KEYS``
are copied from the recipe's saved ``hyperparams.yaml`` (references resolved),
with the top-level architecture values (``speechbrain_slap.hparams.ARCHITECTURE_KEYS``)
that fine-tuning recipes read back, so the exported model is built exactly as
it was trained. The text encoder's ``source`` (a hub id, a local folder, or
the folder a package ships) is saved into ``text_encoder/`` and the yaml points
there as ``<model_folder>/text_encoder``: ``model_folder`` is a ``!PLACEHOLDER``
that the loaders set to the folder's absolute path, so the folder loads from
wherever it is moved, offline and with an empty Hugging Face cache.

A **tagging model folder** (``export_tagging_model``), loaded by SpeechBrain's
stock ``speechbrain.inference.classifiers.EncoderClassifier.from_hparams``:
``hyperparams.yaml`` (the shipped architecture file with the trained model's
values, then the classifier and the keys ``EncoderClassifier`` needs),
``embedding_model.ckpt``, ``classifier.ckpt``, ``label_encoder.ckpt``,
``SHA256SUMS`` and ``README.md``.

Authors
 * speechbrain-slap contributors 2026
"""

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML

from speechbrain_slap.hparams import (
    ARCHITECTURE_KEYS,
    ENCODER_ARCHITECTURE_KEYS,
    architecture_yaml,
)
from speechbrain_slap.model_folder.checksums import SUMS_FILE, ModelFolderError, write_checksums
from speechbrain_slap.outputs import write_atomic

logger = logging.getLogger(__name__)

MODEL_KEYS = (
    "compute_features",
    "audio_encoder",
    "audio_pooling",
    "text_encoder",
    "caption_decoder",
    "clap_loss",
)
# In the checkpoint, copied when present: what fine-tuning needs beyond inference.
TRAINING_FILES = ("ssl_head.ckpt", "teacher.ckpt")
# Files that hold weights (an export replaces those of an earlier one).
WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
DEFAULT_MAX_DURATION = 30.0
# The text encoder's Hugging Face files inside a SLAP folder, and the yaml key the loaders
# set to the folder's absolute path (the yaml's paths are <model_folder>/...).
TEXT_ENCODER_DIR = "text_encoder"
FOLDER_KEY = "model_folder"
TRUST_NOTE = (
    "`hyperparams.yaml` is executable configuration (HyperPyYAML): use model folders only "
    "from sources you trust."
)


# --------------------------------------------------------------------------- shared


def write_folder(
    folder: str | Path,
    files: dict[str, Path | Callable],
    yaml_text: str,
    overwrite: bool = False,
) -> Path:
    """Writes a model folder: its files, ``hyperparams.yaml`` and ``SHA256SUMS`` of them all.

    Arguments
    ---------
    folder : str or Path
        The folder (created).
    files : dict
        File name (``sub/name`` in a sub-folder) -> a file to copy, or
        ``write(fout)`` writing the content.
    yaml_text : str
        The ``hyperparams.yaml``.
    overwrite : bool
        Replace the files of a non-empty ``folder`` (weight files of an
        earlier export that this one does not write are removed, and the
        sub-folders this one writes are written anew).

    Returns
    -------
    Path
        ``folder``.

    Example
    -------
    >>> folder = getfixture("tmp_path") / "model"
    >>> _ = write_folder(folder, {"a.ckpt": lambda fout: fout.write(b"w")}, "a: 1\\n")
    >>> sorted(p.name for p in folder.iterdir())
    ['SHA256SUMS', 'a.ckpt', 'hyperparams.yaml']
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ModelFolderError(f"{folder}: exists and is not empty (use overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # an earlier export's files (overwrite)
        if stale.is_file() and (stale.suffix in WEIGHT_SUFFIXES or stale.name == SUMS_FILE):
            stale.unlink()
    for sub in sorted({Path(name).parts[0] for name in files if len(Path(name).parts) > 1}):
        if (folder / sub).is_dir():  # a sub-folder this export writes is written whole
            shutil.rmtree(folder / sub)
    for name, source in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if callable(source):
            write_atomic(folder / name, source)
        else:
            shutil.copyfile(source, folder / name)
    write_atomic(folder / "hyperparams.yaml", yaml_text)
    write_checksums(folder, [*files, "hyperparams.yaml"])
    return folder


def model_card(
    folder: Path,
    title: str,
    summary: str,
    sections: dict[str, list[str]],
    metrics: dict | None,
    usage: str,
) -> str:
    """README.md text of a model folder: what it is, its facts, test metrics, files, usage.

    Arguments
    ---------
    folder : Path
        The written folder (its ``SHA256SUMS`` is listed).
    title : str
        First line.
    summary : str
        A paragraph on what the model is.
    sections : dict
        Section title -> bullet lines (training data, architecture, task...).
    metrics : dict, optional
        Test metrics (``test_results.json``); None: not evaluated.
    usage : str
        Python code that loads and uses the folder.

    Returns
    -------
    str
    """
    lines = [f"# {title}", "", summary, ""]
    for section, items in sections.items():
        lines += [f"## {section}", *(f"- {item}" for item in items or ["(not recorded)"]), ""]
    lines += ["## Test metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
            if k != "metric"
        ]
    else:
        lines.append("Not evaluated.")
    sums = (Path(folder) / SUMS_FILE).read_text().strip()
    lines += ["", "## Files and SHA-256", "", "```", sums, "```", ""]
    lines += ["The loaders check these sums before loading. " + TRUST_NOTE, ""]
    lines += ["## Usage", "", "```python", usage.strip(), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- SLAP folders


def find_best_checkpoint(save_folder: str | Path, max_key: str = "mean_R@1") -> Path:
    """The checkpoint folder with the highest ``max_key`` in its meta (else the newest).

    Arguments
    ---------
    save_folder : str or Path
        A recipe's ``save`` folder (``CKPT+*`` sub-folders).
    max_key : str
        Meta key to maximise.

    Returns
    -------
    Path
        The ``CKPT+...`` folder.
    """
    from speechbrain.utils.checkpoints import Checkpointer

    checkpointer = Checkpointer(save_folder)
    checkpoints = checkpointer.list_checkpoints()
    if not checkpoints:
        raise ModelFolderError(f"{save_folder}: no complete checkpoint (CKPT+*/CKPT.yaml)")
    scored = [c for c in checkpoints if max_key in c.meta]
    if scored:
        return Path(max(scored, key=lambda c: c.meta[max_key]).path)
    return Path(max(checkpoints, key=lambda c: c.meta.get("unixtime", 0)).path)


def _resolved_tree(training_yaml: str | Path):
    """A training yaml loaded round trip (tags kept as data), includes and references resolved."""
    from hyperpyyaml import resolve_references

    with open(training_yaml, encoding="utf-8") as fin:
        resolved = resolve_references(fin)
    return YAML().load(resolved)


def inference_yaml(training_yaml: str | Path, max_duration: float | None = None) -> str:
    """The inference ``hyperparams.yaml`` text for a training yaml.

    Copies, in the training file's order and with references resolved, the
    architecture values (``ARCHITECTURE_KEYS`` the yaml has, and
    ``sample_rate``) and the model definitions (``MODEL_KEYS``), then appends
    the tokenizer, ``window_hop``, ``modules`` and the ``pretrainer``.

    Arguments
    ---------
    training_yaml : str or Path
        A recipe's saved ``hyperparams.yaml`` (or any training yaml).
    max_duration : float, optional
        Longest window in seconds (default: the yaml's ``max_duration`` or 30).

    Returns
    -------
    str
        YAML text.

    Example
    -------
    >>> text = inference_yaml("recipes/pretrain/hparams/pretrain_tiny_synth.yaml")
    >>> "audio_encoder: !new:" in text and "embed_dim: 128" in text and "output_folder" not in text
    True
    """
    return _inference_yaml(_resolved_tree(training_yaml), training_yaml, max_duration)


def _inference_yaml(tree, source, max_duration: float | None, folder_key: bool = False) -> str:
    missing = [key for key in MODEL_KEYS if key not in tree]
    if missing:
        raise ModelFolderError(f"{source}: missing model definitions {missing}")
    wanted = {*MODEL_KEYS, *ARCHITECTURE_KEYS}
    subset = {key: tree[key] for key in tree if key in wanted}
    if max_duration is None:
        max_duration = float(tree.get("max_duration", DEFAULT_MAX_DURATION))

    stream = io.StringIO()
    stream.write(
        "# SLAP model: the architecture and model definitions of the training yaml, then the\n"
        "# inference parts. This file is executable configuration (HyperPyYAML): load model\n"
        "# folders only from sources you trust.\n\n"
    )
    if folder_key:
        stream.write(
            "# This folder's absolute path, set by the loaders (SLAP.from_hparams): every path\n"
            f"# below is <{FOLDER_KEY}>/..., inside the folder.\n"
            f"{FOLDER_KEY}: !PLACEHOLDER\n\n"
        )
    YAML().dump(subset, stream)
    loadables = "\n".join(f"        {key}: !ref <{key}>" for key in MODEL_KEYS[1:])
    modules = "\n".join(f"    {key}: !ref <{key}>" for key in MODEL_KEYS)
    stream.write(
        f"""
# ---- inference -------------------------------------------------------------
max_duration: {max_duration}   # longer audio is split into windows of this length
window_hop: !ref <max_duration>   # seconds between window starts (< max_duration: overlap)
tokenizer: !new:sentencepiece.SentencePieceProcessor

modules:
{modules}

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
{loadables}
        tokenizer: !ref <tokenizer>
"""
    )
    return stream.getvalue()


def _plain_value(config: dict, key: str):
    """A plain scalar of a resolved round-trip tree (None for a missing or tagged value)."""
    value = config.get(key)
    return value if isinstance(value, bool | int | float | str) else None


def find_tokenizer(output_folder: Path) -> Path:
    """The caption SentencePiece model of a recipe output (``save/tokenizer/*.model``)."""
    candidates = sorted((output_folder / "save").glob("**/*.model"))
    if len(candidates) != 1:
        raise ModelFolderError(
            f"{output_folder}: expected one SentencePiece model under save/, "
            f"found {[str(c) for c in candidates]}"
        )
    return candidates[0]


def _text_encoder_source(node) -> str:
    """The value of a resolved tree's text encoder ``source``: a str, or a tag such as
    ``!apply:speechbrain_slap.lobes.text_encoder.packaged_minilm_path []`` evaluated."""
    if isinstance(node, str):
        return node
    from hyperpyyaml import load_hyperpyyaml

    stream = io.StringIO()
    YAML().dump({"source": node}, stream)
    value = load_hyperpyyaml(stream.getvalue())["source"]
    if not isinstance(value, str | Path):
        raise ModelFolderError(f"text_encoder.source: expected a folder or hub id, got {value!r}")
    return str(value)


def save_text_encoder(source: str, target: str | Path) -> list[Path]:
    """Saves a Hugging Face text encoder's config, tokenizer files and weights into ``target``.

    What ``speechbrain_slap.lobes.text_encoder.HFTextEncoder`` loads with
    ``AutoTokenizer`` / ``AutoModel.from_pretrained``, written with their
    ``save_pretrained`` (``config.json``, ``tokenizer.json``,
    ``tokenizer_config.json``, ``model.safetensors``...).

    Arguments
    ---------
    source : str
        Hub id or local folder, as the training yaml gives it.
    target : str or Path
        Folder to write (created).

    Returns
    -------
    list of Path
        The files written.

    Example
    -------
    >>> from speechbrain_slap.lobes.text_encoder import packaged_minilm_path
    >>> target = getfixture("tmp_path") / "text_encoder"
    >>> sorted(p.name for p in save_text_encoder(packaged_minilm_path(), target))[:2]
    ['config.json', 'model.safetensors']
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    local = {"local_files_only": True} if Path(source).is_dir() else {}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # an export prints what it wrote, not loading bars
    try:
        AutoTokenizer.from_pretrained(source, **local).save_pretrained(target)
        AutoModel.from_pretrained(source, **local).save_pretrained(target)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return sorted(path for path in target.rglob("*") if path.is_file())


def _bundle_text_encoder(tree, staging: Path) -> dict[str, Path]:
    """Saves the tree's text encoder into ``staging`` and points the tree at the folder's copy.

    ``text_source`` (when the tree has it) and ``text_encoder.source`` become
    ``!ref <model_folder>/text_encoder``; a ``cache_dir`` is dropped (nothing
    is downloaded). Returns the files as ``text_encoder/<name>`` -> path.
    """
    from ruamel.yaml.comments import TaggedScalar

    node = tree["text_encoder"]
    if not isinstance(node, dict) or "source" not in node:
        raise ModelFolderError("text_encoder: expected an HFTextEncoder definition with a source")
    source = _text_encoder_source(node["source"])
    try:
        written = save_text_encoder(source, staging)
    except OSError as error:
        raise ModelFolderError(
            f"text_encoder.source {source!r}: cannot save the text encoder into the model "
            f"folder ({error})"
        ) from error
    inside = TaggedScalar(f"<{FOLDER_KEY}>/{TEXT_ENCODER_DIR}", tag="!ref")
    if "text_source" in tree:
        tree["text_source"] = inside
        node["source"] = TaggedScalar("<text_source>", tag="!ref")
    else:
        node["source"] = inside
    node.pop("cache_dir", None)
    return {f"{TEXT_ENCODER_DIR}/{path.relative_to(staging).as_posix()}": path for path in written}


def export_model(
    output_folder: str | Path,
    model_folder: str | Path,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Turns a pretraining/fine-tuning recipe output into a SLAP model folder.

    Arguments
    ---------
    output_folder : str or Path
        The recipe's ``output_folder`` (``hyperparams.yaml``, ``save/``, and
        ``test_results.json`` when the recipe evaluated the test split).
    model_folder : str or Path
        Folder to write (created).
    checkpoint : str or Path, optional
        A ``CKPT+...`` folder; default: the best by ``mean_R@1``.
    overwrite : bool
        Replace the files of an existing non-empty ``model_folder``.

    Returns
    -------
    Path
        ``model_folder``.
    """
    output_folder, model_folder = Path(output_folder), Path(model_folder)
    training_yaml = output_folder / "hyperparams.yaml"
    if not training_yaml.is_file():
        raise ModelFolderError(f"{output_folder}: no hyperparams.yaml; is it a recipe output?")
    if model_folder.exists() and any(model_folder.iterdir()) and not overwrite:
        raise ModelFolderError(f"{model_folder}: exists and is not empty (use overwrite)")
    checkpoint = Path(checkpoint) if checkpoint else find_best_checkpoint(output_folder / "save")
    sources = {f"{key}.ckpt": checkpoint / f"{key}.ckpt" for key in MODEL_KEYS[1:]}
    sources["tokenizer.ckpt"] = find_tokenizer(output_folder)
    for name, source in sources.items():
        if not source.is_file():
            raise ModelFolderError(f"{source}: missing, needed for {name}")
    sources.update(
        {name: checkpoint / name for name in TRAINING_FILES if (checkpoint / name).is_file()}
    )
    tree = _resolved_tree(training_yaml)
    with tempfile.TemporaryDirectory() as staging:
        sources.update(_bundle_text_encoder(tree, Path(staging)))
        text = _inference_yaml(tree, training_yaml, None, folder_key=True)
        write_folder(model_folder, sources, text, overwrite)

    results = output_folder / "test_results.json"
    metrics = json.loads(results.read_text()) if results.is_file() else None
    data = [
        f"{key}: `{_plain_value(tree, key)}`"
        for key in ("generate_corpus", "data_folder", "train_csv", "train_shards")
        if _plain_value(tree, key) is not None
    ]
    arch = [
        f"{key}: {tree[key]}"
        for key in ("embed_dim", "depth", "num_heads", "mlp_hidden", "n_mels", "max_duration")
        if isinstance(tree.get(key), int | float)
    ]
    usage = f"""
from speechbrain_slap.inference import SLAP

# This folder, or its Hugging Face hub id once uploaded:
# SLAP.from_hparams(source="org/name", savedir="models/org-name")
model = SLAP.from_hparams(source="{model_folder.name}")
audio = model.encode_file("clip.wav")
scores, best, index, labels = model.classify_file("clip.wav", ["dog barking", "rain"])
"""
    card = model_card(
        model_folder,
        "SLAP model",
        f"Exported by `slap export` from the recipe checkpoint `{checkpoint.name}`.",
        {"Training data": data, "Architecture": arch},
        metrics,
        usage,
    )
    write_atomic(model_folder / "README.md", card)
    logger.info("model folder written to %s (from %s)", model_folder, checkpoint)
    return model_folder


# --------------------------------------------------------------------------- tagging folders

# What a tagging folder adds to the architecture file: the classifier and the keys that
# EncoderClassifier.from_hparams loads.
_TAGGING_YAML = """
embedding_model: !new:speechbrain_slap.lobes.classifier.SLAPEmbedder
    audio_encoder: !ref <audio_encoder>
    audio_pooling: !ref <audio_pooling>

# SLAPFbank normalises with fixed statistics already.
mean_var_norm: !new:speechbrain_slap.lobes.classifier.IdentityNormalization

n_classes: {n_classes}
# {output_comment}
classifier_output: "{output}"
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


def tagging_yaml(hparams: dict, n_classes: int, title: str) -> str:
    """The ``hyperparams.yaml`` of a tagging folder for the recipe's ``hparams``.

    The shipped architecture file (``speechbrain_slap/hparams/slap_base.yaml``)
    with the scalars ``ENCODER_ARCHITECTURE_KEYS`` of ``hparams``, then the
    linear classifier (``log_softmax`` for single-label models, ``sigmoid`` for
    multi-label ones) and what ``EncoderClassifier`` needs.

    Arguments
    ---------
    hparams : dict
        ``multilabel`` and ``ENCODER_ARCHITECTURE_KEYS``.
    n_classes : int
        Classifier outputs.
    title : str
        Named in the header comment.

    Returns
    -------
    str

    Example
    -------
    >>> values = {"sample_rate": 16000, "n_mels": 64, "feature_mean": -15.0,
    ...           "feature_std": 12.0, "embed_dim": 32, "depth": 3, "num_heads": 2,
    ...           "mlp_hidden": 64, "local_window": 48, "local_attention": True}
    >>> text = tagging_yaml({**values, "multilabel": True}, 5, "toy")
    >>> "embed_dim: 32" in text and 'classifier_output: "sigmoid"' in text
    True
    """
    missing = [key for key in (*ENCODER_ARCHITECTURE_KEYS, "multilabel") if key not in hparams]
    if missing:
        raise KeyError(f"tagging export: hparams lack {missing}")
    scalars = {key: hparams[key] for key in ENCODER_ARCHITECTURE_KEYS}
    multilabel = hparams["multilabel"]
    comment = (
        "sigmoid: independent per-class probabilities (multi-label)"
        if multilabel
        else "log_softmax: log-posteriors over the classes (single-label)"
    )
    header = (
        f"# {title}: SLAP audio encoder + MAP pooling + linear layer, loadable with\n"
        "# SpeechBrain's speechbrain.inference.classifiers.EncoderClassifier.from_hparams.\n"
        "# Written by speechbrain_slap.model_folder.export_tagging_model.\n\n"
    )
    return (
        header
        + architecture_yaml({**scalars, "attention_backend": "auto"})
        + _TAGGING_YAML.format(
            output_comment=comment,
            n_classes=n_classes,
            output="sigmoid" if multilabel else "log_softmax",
        )
    )


def export_tagging_model(
    hparams: dict,
    label_encoder,
    out_dir: str | Path,
    title: str = "SLAP audio tagging model",
    metrics: dict | None = None,
) -> Path:
    """Writes a tagging model folder that ``EncoderClassifier.from_hparams`` loads.

    ``embedding_model.ckpt`` and ``classifier.ckpt`` are CPU state dicts,
    ``label_encoder.ckpt`` the ``CategoricalEncoder`` text format; every file
    is named ``<loadable>.ckpt``, the name ``from_hparams`` looks for in
    ``source`` when the pretrainer gives no path, so the folder loads from
    wherever it is moved or uploaded. Before the model card is written, the
    folder is rebuilt from its own yaml, every weight loaded strictly, and its
    scores on a test signal compared with the given modules. Existing files
    are replaced.

    Arguments
    ---------
    hparams : dict
        The tagging recipe's hparams: ``compute_features`` (``SLAPFbank``),
        ``embedding_model`` (``SLAPEmbedder``), ``classifier``
        (``LinearClassifier``), ``multilabel`` and the architecture scalars
        ``ENCODER_ARCHITECTURE_KEYS`` that built them.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        Class index <-> label, one label per classifier output.
    out_dir : str or Path
        Folder to write (created).
    title : str
        First line of the model card.
    metrics : dict, optional
        Test metrics to list in the model card (e.g. ``test_results.json``).

    Returns
    -------
    Path
        The folder.
    """
    import torch
    from hyperpyyaml import load_hyperpyyaml

    from speechbrain_slap.model_folder.loading import load_state_dict_strict

    missing = [
        key for key in ("compute_features", "embedding_model", "classifier") if key not in hparams
    ]
    if missing:
        raise KeyError(f"export_tagging_model: hparams lack {missing}")
    n_classes = hparams["classifier"].linear.out_features
    if len(label_encoder) != n_classes:
        raise ValueError(
            f"label_encoder has {len(label_encoder)} labels but the classifier has "
            f"{n_classes} outputs"
        )
    text = tagging_yaml(hparams, n_classes, title)

    def state_dict(key):
        state = {k: v.cpu() for k, v in hparams[key].state_dict().items()}
        return lambda fout: torch.save(state, fout)

    files = {f"{key}.ckpt": state_dict(key) for key in ("embedding_model", "classifier")}
    files["label_encoder.ckpt"] = lambda fout: fout.write(_label_encoder_text(label_encoder))
    out = write_folder(out_dir, files, text, overwrite=True)

    with open(out / "hyperparams.yaml") as fin:  # self-check: the folder rebuilds the model
        rebuilt = load_hyperpyyaml(fin)
    for key in ("embedding_model", "classifier"):
        load_state_dict_strict(rebuilt[key], out / f"{key}.ckpt")
    _check_same_scores(hparams, rebuilt)

    labels = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    shown = ", ".join(str(label) for label in labels[:20])
    if len(labels) > 20:
        shown += f", ... ({len(labels) - 20} more)"
    kind = (
        "multi-label (sigmoid scores)" if hparams["multilabel"] else "single-label (log-posteriors)"
    )
    summary = (
        "A SLAP audio encoder (packed Transformer over 16x16 log-mel patches, multi-head "
        "attention pooling) fine-tuned with a linear classification layer, as in the SLAP "
        "paper (Sec. 3.1). Input: 16 kHz mono audio; EncoderClassifier encodes a clip whole "
        "(no windowing), so use clips up to the 30 s the model was trained on. The package "
        "`speechbrain-slap` must be installed (the modules come from it)."
    )
    task = [f"Task: {kind}, {len(labels)} classes", f"Classes: {shown}"]
    arch = [f"{k}: {hparams[k]}" for k in ("embed_dim", "depth", "num_heads", "n_mels")]
    usage = """
from speechbrain_slap.tagging import TaggingClassifier

# This folder, or its Hugging Face hub id ("org/name") once uploaded; the files are
# checked against SHA256SUMS first. SpeechBrain's EncoderClassifier.from_hparams
# loads the folder too, without the checks.
model = TaggingClassifier.from_hparams(source="PATH/TO/THIS/FOLDER")
scores, best_score, index, label = model.classify_file("clip.wav")
# classify_batch(wavs, wav_lens) takes a padded 16 kHz batch.
"""
    card = model_card(out, title, summary, {"Task": task, "Architecture": arch}, metrics, usage)
    write_atomic(out / "README.md", card)
    logger.info("tagging model exported to %s", out)
    return out


def _label_encoder_text(label_encoder) -> bytes:
    """``CategoricalEncoder.save``'s file content (it writes to a path only)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "label_encoder.ckpt"
        label_encoder.save(path)
        return path.read_bytes()


def _check_same_scores(trained: dict, rebuilt: dict) -> None:
    """Logits of a fixed 1.5 s signal through the trained and the rebuilt modules agree."""
    import torch

    wavs = 0.1 * torch.randn(1, 24000, generator=torch.Generator().manual_seed(0))
    logits = []
    for hp in (trained, rebuilt):
        modules = (hp["compute_features"], hp["embedding_model"], hp["classifier"])
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        device = hp["classifier"].linear.weight.device
        with torch.no_grad():
            emb = hp["embedding_model"](hp["compute_features"](wavs.to(device)), None)
            logits.append(hp["classifier"].linear(emb).cpu())
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)
    if not torch.allclose(logits[0], logits[1], atol=1e-4, rtol=1e-4):
        raise RuntimeError(
            "the exported tagging model does not reproduce the trained model's scores "
            f"(max difference {float((logits[0] - logits[1]).abs().max()):.3g}); check that "
            f"the yaml keys {ENCODER_ARCHITECTURE_KEYS} are the ones that built the trained modules"
        )
