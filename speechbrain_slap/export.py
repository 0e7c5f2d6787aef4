"""Model folders: from a recipe's output to what ``SLAP.from_hparams`` loads.

A SLAP model folder holds::

    hyperparams.yaml      the model definitions of the training yaml, verbatim,
                          plus ``modules``, ``tokenizer`` and ``pretrainer``
    audio_encoder.ckpt    state dicts (``torch.save``) of the student encoder,
    audio_pooling.ckpt    the audio MAP, the text encoder, the caption decoder
    text_encoder.ckpt     and the CLAP loss (its learned logit scale)
    caption_decoder.ckpt
    clap_loss.ckpt
    tokenizer.ckpt        the caption SentencePiece model
    ssl_head.ckpt         the SSL prototype head and the EMA teacher: not used
    teacher.ckpt          for inference, kept so fine-tuning continues all three losses
    SHA256SUMS            ``<sha256>  <file>`` for every weight file
    README.md             model card: data, architecture, test metrics, usage

The inference yaml is not written by hand: the definitions of
``compute_features``, ``audio_encoder``, ``audio_pooling``, ``text_encoder``,
``caption_decoder`` and ``clap_loss`` are copied from the recipe's saved
``hyperparams.yaml`` together with every key they reference, so the exported
model is built exactly as it was trained.

Authors
 * speechbrain-slap contributors 2026
"""

import hashlib
import importlib
import inspect
import io
import json
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import TextIO

from ruamel.yaml import YAML

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
SUMS_FILE = "SHA256SUMS"
# The only files of a model folder that SHA256SUMS need not list (nothing loads them;
# hidden files such as a hub repository's .gitattributes are left out too).
UNSIGNED_FILES = (SUMS_FILE, "README.md")
# Files that hold weights (an export replaces those of an earlier one).
WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
DEFAULT_MAX_DURATION = 30.0
# The keys a downstream yaml must define as the model folder does to load its encoder
# (features and encoder), and the arguments that pick a kernel, not what is computed.
ENCODER_KEYS = ("compute_features", "audio_encoder")
KERNEL_ARGUMENTS = ("attention_backend",)
_REFERENCE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)")


class ModelFolderError(ValueError):
    """A model folder or recipe output that cannot be used; the message says why."""


def sha256sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file.

    Arguments
    ---------
    path : str or Path
        File to hash.
    chunk_size : int
        Bytes read at a time.

    Returns
    -------
    str
        64 hex characters.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "empty"
    >>> path.write_bytes(b"")
    0
    >>> sha256sum(path)[:16]
    'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        while block := fin.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | Path, names: list[str]) -> Path:
    """Writes ``SHA256SUMS`` (``sha256sum`` format) for ``names`` inside ``folder``.

    Arguments
    ---------
    folder : str or Path
        Model folder.
    names : list of str
        File names relative to ``folder``.

    Returns
    -------
    Path
        The sums file.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.ckpt").write_bytes(b"weights")
    >>> write_checksums(folder, ["a.ckpt"]).read_text().split()[1]
    'a.ckpt'
    """
    folder = Path(folder)
    lines = [f"{sha256sum(folder / name)}  {name}\n" for name in sorted(names)]
    path = folder / SUMS_FILE
    path.write_text("".join(lines))
    return path


def verify_checksums(folder: str | Path) -> list[str]:
    """Checks every file listed in ``folder/SHA256SUMS`` against its digest.

    Arguments
    ---------
    folder : str or Path
        Model folder.

    Returns
    -------
    list of str
        The verified file names.

    Raises
    ------
    ModelFolderError
        No sums file, a malformed line, a listed file missing, a digest
        mismatch, or a file the sums do not list (``hyperparams.yaml``
        above all) other than ``UNSIGNED_FILES`` and hidden files (the
        message names the file).

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.ckpt").write_bytes(b"weights")
    >>> _ = (folder / "hyperparams.yaml").write_text("a: 1")
    >>> _ = write_checksums(folder, ["a.ckpt", "hyperparams.yaml"])
    >>> verify_checksums(folder)
    ['a.ckpt', 'hyperparams.yaml']
    >>> _ = (folder / "a.ckpt").write_bytes(b"tampered")
    >>> verify_checksums(folder)
    Traceback (most recent call last):
    ...
    speechbrain_slap.export.ModelFolderError: ...a.ckpt: SHA-256 mismatch...
    """
    folder = Path(folder)
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise ModelFolderError(
            f"{folder}: no {SUMS_FILE} file; a model folder lists the SHA-256 of its weight files "
            "(write one with speechbrain_slap.export.write_checksums if you trust the files)"
        )
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{sums}: cannot read ({error})") from None
    verified = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise ModelFolderError(f"{sums}, line {number}: expected '<sha256>  <file name>'")
        expected, name = parts[0], parts[1].strip().lstrip("*")
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelFolderError(f"{sums}, line {number}: file name must be inside the folder")
        if not path.is_file():
            raise ModelFolderError(f"{path}: listed in {SUMS_FILE} but missing")
        actual = sha256sum(path)
        if actual != expected:
            raise ModelFolderError(
                f"{path}: SHA-256 mismatch (expected {expected}, file has {actual}); "
                "the file is corrupt or was changed"
            )
        verified.append(name)
    unlisted = sorted(
        name
        for name in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if name not in verified
        and name not in UNSIGNED_FILES
        and not name.startswith(".")
        and "/." not in name
    )
    if "hyperparams.yaml" in unlisted:
        raise ModelFolderError(
            f"{sums}: does not list hyperparams.yaml; the yaml is executable configuration "
            "and must have its SHA-256 there"
        )
    if unlisted:
        raise ModelFolderError(
            f"{folder}: files not listed in {SUMS_FILE}: {unlisted}; every file a model folder "
            "loads must have its SHA-256 there"
        )
    return verified


# What a model folder's hyperparams.yaml may build or call without --trust-remote-code:
# this package, the SpeechBrain and torch building blocks it is made of, the
# tokenizer. Each entry is a dotted prefix of a ``!new:``/``!name:``/``!apply:`` target.
ALLOWED_YAML_TARGETS = (
    "speechbrain_slap.lobes.",
    "speechbrain_slap.losses.",
    "speechbrain_slap.ema.",
    "speechbrain.utils.parameter_transfer.Pretrainer",
    "speechbrain.dataio.encoder.CategoricalEncoder",
    "speechbrain.nnet.",
    "speechbrain.lobes.features.",
    "torch.nn.",
    "sentencepiece.SentencePieceProcessor",
)
# HyperPyYAML tags that only refer to other nodes of the same file (or mark a tuple).
_REFERENCE_TAGS = ("!ref", "!copy")
_DATA_TAGS = {"!tuple", "!PLACEHOLDER"} | {
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")
}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_KEY_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null")}
# HyperPyYAML turns a plain scalar "(...)" into a tuple by loading "[...]" with PyYAML's
# full loader: its inside is YAML too, and must be plain data.
_TUPLE = re.compile(r"^\(.*\)$", re.DOTALL)
_REFERENCE_PART = re.compile(r"<[^>]*>")
# Bounds on what an untrusted yaml may ask of the loader.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


def _is_allowed_target(target: str, allowed: tuple[str, ...]) -> bool:
    """Whether a dotted ``!new:``/``!name:``/``!apply:`` target stays inside ``allowed``.

    The target is resolved as HyperPyYAML resolves it (the longest importable
    module, then attributes), importing only modules whose names pass the
    prefix check. Every module met on the way and the object reached must be
    inside ``allowed`` too, so ``allowed.module.os.system`` (a module that
    imports ``os``) or a re-exported foreign function is refused; so is any
    private or dunder part (``...__init__.__globals__``).
    """
    parts = target.split(".")
    if not target.startswith(allowed) or any(not p or p.startswith("_") for p in parts):
        return False
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        break
    else:
        return False
    for name in parts[split:]:
        obj = getattr(obj, name, None)
        if obj is None:
            return False
        if inspect.ismodule(obj) and not f"{obj.__name__}.".startswith(allowed):
            return False
    if inspect.ismodule(obj) or not callable(obj):
        return not inspect.ismodule(obj)  # plain data reached through allowed modules
    qualified = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    return qualified.startswith(allowed)


def _compose(text: str, source: str):
    """The node graph of YAML text, from the loader class HyperPyYAML loads with.

    ``source`` starts the error message (``"<folder>: cannot load ...: <file>"``).
    """
    import ruamel.yaml

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ruamel's old-API classes warn; HyperPyYAML uses them
        loader = ruamel.yaml.Loader(io.StringIO(text))
        try:
            return loader.get_single_node()
        except ruamel.yaml.YAMLError as error:
            raise ModelFolderError(f"{source} is not valid YAML ({error})") from None
        except RecursionError:
            raise ModelFolderError(f"{source} is YAML nested too deeply to read") from None
        finally:
            loader.dispose()


def _tuple_offences(text: str) -> list[str]:
    """What a ``(...)`` tuple scalar would build: anything but plain data is refused."""
    import yaml

    try:
        node = yaml.compose("[" + text[1:-1] + "]", Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return [f"tuple {text!r} (not parsable)"]
    stack, found = [node], []
    while stack:
        node = stack.pop()
        if node.tag not in _DATA_TAGS or node.tag == "!tuple":
            found.append(f"tuple {text!r} (tag {node.tag})")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in node.value for item in pair)
    return found


def _reference_offences(text: str) -> list[str]:
    """A reference expression whose arithmetic could take unbounded time or memory.

    HyperPyYAML evaluates ``<a> + 1``-style expressions after substituting the
    references; ``*`` and ``**`` there can build huge numbers or strings.
    """
    if "*" in _REFERENCE_PART.sub("", text):
        return [f"reference arithmetic with * in {text!r}"]
    return []


def _node_offences(root, allowed: tuple[str, ...]) -> list[str]:
    """Every tag of a composed YAML graph that is not plain data or an allowed target.

    Walks keys and values of every mapping (flow or block, complex ``?`` keys,
    merge keys) and every sequence, each node once however many aliases point
    at it; refuses tagged or non-scalar mapping keys, cycles, and graphs whose
    alias expansion (what HyperPyYAML's reference walk visits) exceeds
    ``MAX_YAML_NODES`` nodes.
    """
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    found, expanded, active = [], {}, set()

    def children(node):
        if isinstance(node, MappingNode):
            return [item for pair in node.value for item in pair]
        return node.value if isinstance(node, SequenceNode) else []

    def check_tag(node, is_key):
        tag = node.tag
        if is_key:
            if not isinstance(node, ScalarNode) or tag not in _KEY_TAGS | {_MERGE_TAG}:
                found.append(f"{tag} (on a mapping key)")
            return
        if tag.startswith(_REFERENCE_TAGS) and isinstance(node, ScalarNode):
            found.extend(_reference_offences(node.value))
        elif tag in _DATA_TAGS:
            if isinstance(node, ScalarNode) and node.style is None:
                if tag == "!tuple" or (tag.endswith(":str") and _TUPLE.match(node.value)):
                    found.extend(_tuple_offences(node.value))
                if _REFERENCE_PART.search(node.value):  # reached by a !ref chain, evaluated
                    found.extend(_reference_offences(node.value))
        else:
            kind, _, target = tag.partition(":")
            if kind not in ("!new", "!name", "!apply") or not _is_allowed_target(target, allowed):
                found.append(tag)

    def size(node, is_key=False):
        """Nodes visited when every alias is expanded (memoised; checks each node once)."""
        if id(node) in active:
            found.append("a recursive alias")
            return MAX_YAML_NODES + 1
        if id(node) not in expanded:
            active.add(id(node))
            check_tag(node, is_key)
            if isinstance(node, MappingNode):
                total = 1 + sum(size(k, True) + size(v) for k, v in node.value)
            else:
                total = 1 + sum(size(child) for child in children(node))
            active.discard(id(node))
            expanded[id(node)] = total
        return expanded[id(node)]

    try:
        if root is not None and size(root) > MAX_YAML_NODES:
            found.append(f"aliases that expand to more than {MAX_YAML_NODES} nodes")
    except RecursionError:
        found.append("nesting too deep to check")
    return found


def untrusted_yaml_targets(
    yaml_file: str | Path, allowed: tuple[str, ...] = ALLOWED_YAML_TARGETS
) -> list[str]:
    """The tags of a HyperPyYAML file that build or call something outside ``allowed``.

    HyperPyYAML is executable configuration: ``!new:``, ``!name:``, ``!apply:``,
    ``!applyref:`` and ``!module:`` tags import and run Python, ``!include:``
    reads other files, YAML's own ``!!python/...`` tags build objects, and a
    plain ``(...)`` scalar is loaded again as YAML to make a tuple. The check
    walks the node graph of the loader class HyperPyYAML uses, twice: the file
    as written, and (when that is clean) the text HyperPyYAML builds from it
    after resolving references, i.e. exactly what it constructs. Every node is
    checked wherever it stands: values, mapping keys (which must be plain
    scalars), complex keys, flow mappings, aliases and merge keys. Allowed are
    plain data, ``!ref``/``!copy`` references (without ``*`` arithmetic),
    tuples of plain data, and ``!new:``/``!name:``/``!apply:`` whose target
    resolves inside the allow-list (only modules that pass the prefix check
    are imported to find out). Also listed: every ``paths`` entry of the
    ``pretrainer`` (a model folder's weights are its own ``<name>.ckpt``
    files, which ``SHA256SUMS`` covers), and a file over ``MAX_YAML_BYTES``.

    Arguments
    ---------
    yaml_file : str or Path
        The yaml to inspect.
    allowed : tuple of str
        Allowed dotted prefixes.

    Returns
    -------
    list of str
        Offending tags, e.g. ``["!apply:os.system"]``.

    Raises
    ------
    ModelFolderError
        The file cannot be read or is not valid YAML.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "hyperparams.yaml"
    >>> text = "a: !new:torch.nn.Linear [2, 2]\\nb: !apply:os.system [ls]\\n"
    >>> _ = path.write_text(text + "c: !apply:torch.nn.modules.module.torch.ones [2]\\n")
    >>> untrusted_yaml_targets(path)
    ['!apply:os.system', '!apply:torch.nn.modules.module.torch.ones']
    >>> _ = path.write_text("extra:\\n  !apply:os.getpid : 1\\n")
    >>> untrusted_yaml_targets(path)
    ['!apply:os.getpid (on a mapping key)']
    """
    yaml_file = Path(yaml_file)
    source = f"{yaml_file.parent}: cannot load this model folder: {yaml_file.name}"
    try:
        raw = yaml_file.read_bytes()
        if len(raw) > MAX_YAML_BYTES:
            return [f"a file of {len(raw)} bytes (at most {MAX_YAML_BYTES})"]
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{source}: cannot read ({error})") from None
    tree = _compose(text, source)
    found = _node_offences(tree, allowed)
    if found:
        return _unique(found)
    from hyperpyyaml.core import resolve_references

    try:
        resolved = resolve_references(io.StringIO(text)).getvalue()
    except Exception as error:  # what HyperPyYAML would raise on this file
        raise ModelFolderError(f"{source}: references do not resolve ({error})") from None
    found = _node_offences(_compose(resolved, source), allowed)
    found.extend(_pretrainer_paths(tree))
    return _unique(found)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _pretrainer_paths(tree) -> list[str]:
    """``pretrainer: ... paths: {key: path}`` entries of a composed top-level mapping."""
    from ruamel.yaml.nodes import MappingNode

    def lookup(node, key):
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if getattr(k, "value", None) == key:
                    return v
        return None

    paths = lookup(lookup(tree, "pretrainer"), "paths")
    if not isinstance(paths, MappingNode):
        return []
    return [f"pretrainer paths: {k.value}" for k, _ in paths.value]


def check_yaml_targets(yaml_file: str | Path, trust_remote_code: bool = False) -> None:
    """Raises ``ModelFolderError`` if the yaml builds anything outside the allow-list.

    Arguments
    ---------
    yaml_file : str or Path
        A model folder's ``hyperparams.yaml``.
    trust_remote_code : bool
        Skip the check (the user vouches for the folder).
    """
    if trust_remote_code:
        return
    offending = untrusted_yaml_targets(yaml_file)
    if offending:
        raise ModelFolderError(
            f"{yaml_file}: builds or calls code outside the allow-list: {offending}. "
            "hyperparams.yaml is executable configuration; if you trust where this folder "
            "comes from, load it with trust_remote_code=True (slap: --trust-remote-code)"
        )


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


def inference_yaml(training_yaml: str | Path, max_duration: float | None = None) -> str:
    """The inference ``hyperparams.yaml`` text for a training yaml.

    Copies the model definitions (``MODEL_KEYS``) and, recursively, every
    top-level key they reference (``<key>``), in the training file's order, then
    appends the tokenizer, ``window_hop``, ``modules`` and the ``pretrainer``.

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
    >>> "audio_encoder:" in text and "output_folder" not in text
    True
    """
    yaml = YAML()  # round trip: tags (!new:, !ref) and order are kept
    with open(training_yaml) as fin:
        tree = yaml.load(fin)
    missing = [key for key in MODEL_KEYS if key not in tree]
    if missing:
        raise ModelFolderError(f"{training_yaml}: missing model definitions {missing}")

    wanted, todo = set(), list(MODEL_KEYS) + ["sample_rate"]
    while todo:
        key = todo.pop()
        if key in wanted or key not in tree:
            continue
        wanted.add(key)
        todo.extend(_references(tree[key]))
    subset = {key: tree[key] for key in tree if key in wanted and key != "max_duration"}
    if max_duration is None:
        max_duration = float(tree.get("max_duration", DEFAULT_MAX_DURATION))

    stream = io.StringIO()
    stream.write(
        "# SLAP model: the model definitions of the training yaml, then the inference parts.\n"
        "# This file is executable configuration (HyperPyYAML): load model folders only from\n"
        "# sources you trust.\n\n"
    )
    yaml.dump(subset, stream)
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


def _references(node) -> list[str]:
    """Top-level keys referenced (``<key``) anywhere inside a yaml node."""
    found = []
    if isinstance(node, dict):
        for value in node.values():
            found.extend(_references(value))
    elif isinstance(node, list | tuple):
        for value in node:
            found.extend(_references(value))
    else:
        text = getattr(node, "value", node)
        if isinstance(text, str):
            found.extend(_REFERENCE.findall(text))
    return found


def _plain_value(config: dict, key: str, depth: int = 0):
    """A scalar of a round-trip-loaded yaml, with simple ``!ref <a>/b`` strings resolved."""
    value = config.get(key)
    if isinstance(value, bool | int | float | str):
        return value
    text = getattr(value, "value", None)
    if getattr(value, "tag", None) is None or not isinstance(text, str) or depth > 8:
        return None
    for name in set(_REFERENCE.findall(text)):
        resolved = _plain_value(config, name, depth + 1)
        if resolved is None:
            return None
        text = text.replace(f"<{name}>", str(resolved))
    return text


def find_tokenizer(output_folder: Path) -> Path:
    """The caption SentencePiece model of a recipe output (``save/tokenizer/*.model``)."""
    candidates = sorted((output_folder / "save").glob("**/*.model"))
    if len(candidates) != 1:
        raise ModelFolderError(
            f"{output_folder}: expected one SentencePiece model under save/, "
            f"found {[str(c) for c in candidates]}"
        )
    return candidates[0]


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
    text = inference_yaml(training_yaml)

    model_folder.mkdir(parents=True, exist_ok=True)
    for stale in model_folder.iterdir():  # an earlier export's files (overwrite)
        if stale.is_file() and (stale.suffix in WEIGHT_SUFFIXES or stale.name == SUMS_FILE):
            stale.unlink()
    for name, source in sources.items():
        shutil.copyfile(source, model_folder / name)
    (model_folder / "hyperparams.yaml").write_text(text)
    write_checksums(model_folder, [*sources, "hyperparams.yaml"])
    results = output_folder / "test_results.json"
    metrics = json.loads(results.read_text()) if results.is_file() else None
    (model_folder / "README.md").write_text(
        model_card(model_folder, training_yaml, checkpoint, metrics)
    )
    logger.info("model folder written to %s (from %s)", model_folder, checkpoint)
    return model_folder


def model_card(
    model_folder: Path, training_yaml: Path, checkpoint: Path, metrics: dict | None
) -> str:
    """README.md text of a model folder: data, architecture, metrics, files, usage."""
    with open(training_yaml) as fin:
        config = YAML().load(fin) or {}  # round trip: tags stay data, nothing is built
    data = [
        f"- {key}: `{_plain_value(config, key)}`"
        for key in ("generate_corpus", "data_folder", "train_csv", "train_shards")
        if _plain_value(config, key) is not None
    ]
    arch = [
        f"- {key}: {config[key]}"
        for key in ("embed_dim", "depth", "num_heads", "mlp_hidden", "n_mels", "max_duration")
        if isinstance(config.get(key), int | float)
    ]
    if metrics:
        rows = [f"| {key} | {value:.4g} |" for key, value in metrics.items()]
        results = "| metric | value |\n|---|---|\n" + "\n".join(rows)
    else:
        results = "No test_results.json in the recipe output: not evaluated."
    sums = (model_folder / SUMS_FILE).read_text().strip()
    return f"""# SLAP model

Exported by `slap export` from the recipe checkpoint `{checkpoint.name}`.

## Training data
{chr(10).join(data) or "- (not recorded in the training yaml)"}

## Architecture
{chr(10).join(arch) or "- see hyperparams.yaml"}

## Test metrics (from the recipe's test_results.json)
{results}

## Files and SHA-256
```
{sums}
```
`SLAP.from_hparams` checks these sums before loading. `hyperparams.yaml` is executable
configuration (HyperPyYAML): use model folders only from sources you trust.

## Usage
```python
from speechbrain_slap.inference import SLAP

model = SLAP.from_hparams(source="{model_folder.name}")
audio = model.encode_file("clip.wav")
scores, best, index, labels = model.classify_file("clip.wav", ["dog barking", "rain"])
```
"""


def encoder_definitions(yaml_stream: TextIO, overrides: str | dict | None = None) -> dict:
    """The classes and full arguments (defaults filled in) of ``ENCODER_KEYS`` in a yaml.

    Arguments
    ---------
    yaml_stream : file-like
        A HyperPyYAML file (references are resolved, nothing is built).
    overrides : str or dict, optional
        Overrides, as given to ``load_hyperpyyaml``.

    Returns
    -------
    dict
        Key -> ``(tag, {argument: value})``.

    Example
    -------
    >>> yaml = io.StringIO(
    ...     "n_mels: 64\\n"
    ...     "compute_features: !new:speechbrain_slap.lobes.features.SLAPFbank\\n"
    ...     "    n_mels: !ref <n_mels>\\n"
    ...     "audio_encoder: !new:speechbrain_slap.lobes.audio_encoder.SLAPAudioEncoder\\n"
    ...     "    embed_dim: 128\\n"
    ...     "    attention_backend: sdpa\\n"
    ... )
    >>> tag, arguments = encoder_definitions(yaml)["audio_encoder"]
    >>> arguments["embed_dim"], arguments["depth"], "attention_backend" in arguments
    (128, 12, False)
    """
    from hyperpyyaml import resolve_references

    name = getattr(yaml_stream, "name", "yaml")
    tree = YAML(typ="rt").load(resolve_references(yaml_stream, overrides)) or {}
    definitions = {}
    for key in ENCODER_KEYS:
        node = tree.get(key)
        tag = str(getattr(getattr(node, "tag", None), "value", ""))
        if not isinstance(node, dict) or not tag.startswith("!new:"):
            raise ValueError(f"{name}: expected '{key}' to be a !new: definition")
        module, _, class_name = tag[len("!new:") :].rpartition(".")
        parameters = inspect.signature(getattr(importlib.import_module(module), class_name))
        arguments = {
            arg: p.default for arg, p in parameters.parameters.items() if p.default is not p.empty
        }
        arguments.update(node)
        for arg in KERNEL_ARGUMENTS:
            arguments.pop(arg, None)
        definitions[key] = (tag, arguments)
    return definitions


def check_encoder_matches(
    hparams_file: str | Path, overrides: str | dict | None, model_folder: str | Path
):
    """Fails early if a recipe's yaml would build other features or another encoder.

    For a downstream recipe that loads ``audio_encoder.ckpt`` of a model folder
    into an encoder its own yaml defines. The weights alone cannot catch every
    difference (a different ``num_heads`` or feature statistics load without
    error and give wrong features).

    Arguments
    ---------
    hparams_file : str or Path
        The recipe's yaml.
    overrides : str or dict or None
        Its command-line overrides.
    model_folder : str or Path
        The SLAP model folder (its ``hyperparams.yaml`` is read).

    Raises
    ------
    ValueError
        Listing every differing argument of ``compute_features`` and ``audio_encoder``.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> model_yaml = (
    ...     "compute_features: !new:speechbrain_slap.lobes.features.SLAPFbank\\n"
    ...     "    std: 12.0\\n"
    ...     "audio_encoder: !new:speechbrain_slap.lobes.audio_encoder.SLAPAudioEncoder\\n"
    ...     "    num_heads: 4\\n"
    ... )
    >>> _ = (folder / "hyperparams.yaml").write_text(model_yaml)
    >>> _ = (folder / "recipe.yaml").write_text(model_yaml.replace("num_heads: 4", "num_heads: 2"))
    >>> check_encoder_matches(folder / "recipe.yaml", None, folder)
    Traceback (most recent call last):
      ...
    ValueError: ... audio_encoder.num_heads: 2 here, 4 in the model folder
    """
    model_yaml = Path(model_folder) / "hyperparams.yaml"
    if not model_yaml.is_file():
        raise FileNotFoundError(f"{model_yaml}: not found; is {model_folder} a SLAP model folder?")
    with open(hparams_file) as fin:
        ours = encoder_definitions(fin, overrides)
    with open(model_yaml) as fin:
        theirs = encoder_definitions(fin)
    problems = []
    for key in ENCODER_KEYS:
        (our_tag, our_args), (their_tag, their_args) = ours[key], theirs[key]
        if our_tag != their_tag:
            problems.append(f"{key}: {our_tag} here, {their_tag} in the model folder")
            continue
        for arg in sorted(our_args.keys() | their_args.keys()):
            if our_args.get(arg) != their_args.get(arg):
                problems.append(
                    f"{key}.{arg}: {our_args.get(arg)!r} here, "
                    f"{their_args.get(arg)!r} in the model folder"
                )
    if problems:
        raise ValueError(
            f"{hparams_file} does not describe the model in {model_folder}; copy these from "
            f"{model_yaml}:\n  " + "\n  ".join(problems)
        )
