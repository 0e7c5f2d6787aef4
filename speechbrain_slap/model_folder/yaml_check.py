"""The allow-list of a model folder's ``hyperparams.yaml``, checked before it is loaded.

``hyperparams.yaml`` is executable configuration (HyperPyYAML): ``!new:``,
``!name:`` and ``!apply:`` import and run Python. A model folder's yaml may
build or call only what ``ALLOWED_YAML_TARGETS`` lists (this package's lobes
and losses, the SpeechBrain and torch building blocks it is made of, the
tokenizer) unless the user vouches for the folder (``trust_remote_code``).
The check walks the node graph HyperPyYAML loads, on the file and again after
reference resolution (``untrusted_yaml_targets``).

Authors
 * speechbrain-slap contributors 2026
"""

import importlib
import inspect
import io
import os
import re
import warnings
from pathlib import Path

from speechbrain_slap.model_folder.checksums import ModelFolderError

# What a model folder's hyperparams.yaml may build or call without --trust-remote-code:
# this package, the SpeechBrain and torch building blocks it is made of, the
# tokenizer. Each entry is a dotted prefix of a ``!new:``/``!name:``/``!apply:`` target.
ALLOWED_YAML_TARGETS = (
    "speechbrain_slap.lobes.",
    "speechbrain_slap.losses.",
    "speechbrain_slap.ema.",
    "speechbrain.utils.parameter_transfer.Pretrainer",
    "speechbrain.dataio.encoder.CategoricalEncoder",
    "speechbrain.dataio.preprocess.AudioNormalizer",  # a tagging folder's input resampling
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
# The top-level key the loaders set to the folder's absolute path (paths are <model_folder>/...).
FOLDER_KEY = "model_folder"
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
        resolved = resolve_references(io.StringIO(text), folder_overrides(yaml_file)).getvalue()
    except Exception as error:  # what HyperPyYAML would raise on this file
        raise ModelFolderError(f"{source}: references do not resolve ({error})") from None
    found = _node_offences(_compose(resolved, source), allowed)
    found.extend(_pretrainer_paths(tree))
    return _unique(found)


def folder_overrides(yaml_file: str | Path) -> dict:
    """``{"model_folder": <absolute folder>}`` for a yaml with a top-level ``model_folder`` key.

    An exported folder's yaml writes its paths as ``<model_folder>/...`` with
    ``model_folder: !PLACEHOLDER``; the loaders and these checks set it to the
    folder the yaml is in. A yaml without the key gets no override.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "hyperparams.yaml").write_text("model_folder: !PLACEHOLDER\\na: 1\\n")
    >>> folder_overrides(folder / "hyperparams.yaml") == {"model_folder": str(folder.resolve())}
    True
    """
    yaml_file = Path(yaml_file)
    text = yaml_file.read_text(encoding="utf-8")
    if not re.search(rf"^{FOLDER_KEY}\s*:", text, re.MULTILINE):
        return {}
    return {FOLDER_KEY: str(yaml_file.parent.resolve())}


def path_escapes(yaml_file: str | Path) -> list[str]:
    """The values of a model folder's yaml that are paths leading out of the folder.

    After reference resolution (``model_folder`` set to the folder, as the
    loaders set it), every string value that is an absolute path (``/...``,
    ``C:\\...``) or a relative one that exists from the current folder
    (``data/minilm``) must resolve inside the folder, and no string value may
    start with ``~`` or have a ``..`` path part: a model folder reads only its
    own files, which ``SHA256SUMS`` covers. Hub ids (``org/name``, when no
    such local folder exists) and plain words pass.

    Arguments
    ---------
    yaml_file : str or Path
        The folder's ``hyperparams.yaml``.

    Returns
    -------
    list of str
        ``"<key path>: <value>"`` for each escape, e.g.
        ``["text_encoder.source: '/home/me/minilm'"]``.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "hyperparams.yaml").write_text(
    ...     "model_folder: !PLACEHOLDER\\n"
    ...     "inside: !ref <model_folder>/text_encoder\\n"
    ...     "hub: org/name\\n"
    ...     "up: !ref <model_folder>/../other\\n"
    ...     "enc: !new:torch.nn.Identity\\n"
    ...     "    source: /etc\\n"
    ... )
    >>> [escape.split(":")[0] for escape in path_escapes(folder / "hyperparams.yaml")]
    ['up', 'enc.source']
    """
    from hyperpyyaml.core import resolve_references
    from ruamel.yaml import YAML

    yaml_file = Path(yaml_file)
    folder = yaml_file.parent.resolve()
    folders = {folder, Path(os.path.abspath(yaml_file.parent))}
    with open(yaml_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, folder_overrides(yaml_file)).getvalue()
    found = []

    def escapes(value: str) -> bool:
        if ".." in re.split(r"[/\\]", value) or value.startswith("~"):
            return True  # a home folder is never inside the model folder
        absolute = value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[/\\]", value)
        # a relative value with a separator that exists here is read from the current folder
        if not absolute and not (re.search(r"[/\\]", value) and Path(value).exists()):
            return False
        # Lexically, not through symlinks: a folder fetched into a savedir (or a
        # copy whose files link elsewhere) reads linked files, and SHA256SUMS
        # checks their content wherever the link points.
        path = Path(os.path.abspath(value))
        return not any(path == f or f in path.parents for f in folders)

    def walk(node, key):
        if isinstance(node, str):
            if escapes(node):
                found.append(f"{key}: {node!r}")
        elif isinstance(node, dict):
            for name, value in node.items():
                walk(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list | tuple):
            for index, value in enumerate(node):
                walk(value, f"{key}[{index}]")
        elif hasattr(node, "value") and isinstance(node.value, str):  # a tagged scalar
            walk(node.value, key)

    walk(YAML(typ="rt").load(resolved), "")
    return found


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
    """Raises ``ModelFolderError`` if the yaml builds anything outside the allow-list
    or points outside its folder.

    Arguments
    ---------
    yaml_file : str or Path
        A model folder's ``hyperparams.yaml``.
    trust_remote_code : bool
        Skip the checks (the user vouches for the folder).

    Raises
    ------
    ModelFolderError
        The yaml builds or calls code outside the allow-list
        (``untrusted_yaml_targets``), or a path in it leads out of the folder
        (``path_escapes``); the message names the tags or keys.
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
    outside = path_escapes(yaml_file)
    if outside:
        raise ModelFolderError(
            f"{yaml_file}: paths outside the model folder: {'; '.join(outside)}. A model "
            f"folder's yaml may point only inside the folder (<{FOLDER_KEY}>/...), at files "
            "SHA256SUMS covers"
        )
