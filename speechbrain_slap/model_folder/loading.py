"""Loading model folders: the one place where a model folder's files are checked and loaded.

A model comes from a local folder or a Hugging Face hub id (``org/name``):
``model_folder`` fetches a hub id's files with SpeechBrain's own fetching
(``speechbrain.utils.fetching.fetch``), ``SHA256SUMS`` first, then every file
it lists, into ``savedir`` (links into the Hugging Face cache) or the cache's
snapshot folder, and checks them all before anything is loaded.

Every load goes through ``check_model_folder``: the folder's ``SHA256SUMS``
must cover every file and match (``verify_checksums``), and its
``hyperparams.yaml`` may build only what the allow-list allows
(``check_yaml_targets``) unless the user trusts the folder. Then:

* ``load_slap``: the ``SLAP`` inference interface (the ``slap`` command, the
  evaluation recipes, ``SLAP.from_hparams`` itself runs the checks);
* ``load_pretrained``: a recipe's modules from the folder's weights, each
  loaded strictly (``load_state_dict_strict``: every key must match, where
  SpeechBrain's parameter transfer only warns), weights read with
  ``torch.load(..., weights_only=True)``; with the folder's caption tokenizer
  for fine-tuning;
* ``architecture_overrides``: the folder's architecture values as overrides
  of a recipe yaml, so a recipe started from a folder builds the folder's model;
* ``check_encoder_matches``: for a downstream yaml that defines its own
  features and encoder, a check that they are the folder's.

Authors
 * speechbrain-slap contributors 2026
"""

import dataclasses
import functools
import importlib
import inspect
import logging
import re
import shutil
from pathlib import Path
from typing import TextIO

from ruamel.yaml import YAML

from speechbrain_slap.hparams import ARCHITECTURE_KEYS
from speechbrain_slap.model_folder.checksums import (
    SUMS_FILE,
    ModelFolderError,
    read_checksums,
    verify_checksums,
)
from speechbrain_slap.model_folder.yaml_check import (
    FOLDER_KEY,
    check_yaml_targets,
    folder_overrides,
)

logger = logging.getLogger(__name__)

# The keys a downstream yaml must define as the model folder does to load its encoder
# (features and encoder), and the arguments that pick a kernel, not what is computed.
ENCODER_KEYS = ("compute_features", "audio_encoder")
KERNEL_ARGUMENTS = ("attention_backend",)
# A Hugging Face hub model id: "org/name" (a source that is not a local folder).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_id(source) -> bool:
    """Whether ``source`` is read as a Hugging Face hub id: ``org/name``, not a local folder.

    Example
    -------
    >>> is_hub_id("speechbrain-slap/slap-tiny"), is_hub_id("models/slap_tiny/"), is_hub_id("a/b/c")
    (True, False, False)
    """
    text = str(source)
    return not Path(text).is_dir() and HUB_ID.fullmatch(text) is not None and ".." not in text


def fetch_model_folder(
    source: str,
    savedir: str | Path | None = None,
    hparams_file: str = "hyperparams.yaml",
    fetch_config=None,
    huggingface_cache_dir: str | Path | None = None,
) -> Path:
    """Fetches a hub model's files with SpeechBrain's fetching and checks them against its sums.

    ``SHA256SUMS`` is fetched first; then every file it lists (it must list
    ``hparams_file``), each with ``speechbrain.utils.fetching.fetch`` (the
    Hugging Face cache first, ``HF_HUB_OFFLINE=1`` respected); then the whole
    folder is checked (``verify_checksums``: every file listed and matching).

    Arguments
    ---------
    source : str
        Hub id ``org/name``.
    savedir : str or Path, optional
        Folder to collect the files in (links into the Hugging Face cache,
        refreshed on every call); default: the cache's snapshot folder itself.
    hparams_file : str
        The yaml the sums must list.
    fetch_config : speechbrain.utils.fetching.FetchConfig, optional
        Revision, token, network... (``overwrite`` is always on, so the links
        in ``savedir`` are those of this fetch).
    huggingface_cache_dir : str or Path, optional
        The Hugging Face cache (default: ``HF_HUB_CACHE`` / ``HF_HOME``).

    Returns
    -------
    Path
        The local folder holding every file, checked.

    Raises
    ------
    ModelFolderError
        A file cannot be fetched (the message names the hub id and the file),
        or fails its sum.
    """
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch

    config = fetch_config or FetchConfig()
    if huggingface_cache_dir is not None:
        config = dataclasses.replace(config, huggingface_cache_dir=str(huggingface_cache_dir))
    config = dataclasses.replace(config, overwrite=True)
    strategy = LocalStrategy.SYMLINK if savedir is not None else LocalStrategy.NO_LINK

    def get(name: str) -> Path:
        target = None if savedir is None else Path(savedir) / Path(name).parent
        try:
            return Path(
                fetch(
                    name,
                    source,
                    savedir=target,
                    save_filename=Path(name).name,
                    local_strategy=strategy,
                    fetch_config=config,
                )
            )
        except Exception as error:  # what the hub client raises: offline, not found, ...
            raise ModelFolderError(
                f"{source}: not a local folder, and {name} cannot be fetched from the Hugging "
                f"Face hub model {source!r} ({type(error).__name__}: {error})"
            ) from error

    sums = get(SUMS_FILE)
    folder = sums.parent if savedir is None else Path(savedir)
    names = read_checksums(sums)
    if hparams_file not in names:
        raise ModelFolderError(
            f"{source}: {SUMS_FILE} does not list {hparams_file}; the yaml is executable "
            "configuration and must have its SHA-256 there"
        )
    for name in names:
        path = get(name)
        if path.absolute() != (folder / name).absolute():
            raise ModelFolderError(
                f"{source}: {name} was fetched to {path}, not next to {SUMS_FILE} in {folder} "
                "(did the hub repository change while fetching? try again)"
            )
    try:
        verify_checksums(folder)
    except ModelFolderError as error:
        raise ModelFolderError(
            f"{source}: fetched into {folder}, which does not pass its {SUMS_FILE}: {error}"
        ) from None
    logger.info("%s: %d files fetched into %s and checked", source, len(names), folder)
    return folder


def model_folder(
    source,
    savedir: str | Path | None = None,
    hparams_file: str = "hyperparams.yaml",
    fetch_config=None,
    huggingface_cache_dir: str | Path | None = None,
) -> Path:
    """The local folder of ``source``: the folder itself, or a hub id's fetched files.

    A local folder is read in place (``savedir`` is not used: SpeechBrain
    would reuse files already in a savedir, which may be older ones); a hub
    id (``is_hub_id``) is fetched and checked (``fetch_model_folder``).
    Anything else is returned as a path, for ``check_model_folder`` to refuse.

    Example
    -------
    >>> model_folder(getfixture("tmp_path")) == getfixture("tmp_path")
    True
    """
    if is_hub_id(source):
        return fetch_model_folder(
            str(source), savedir, hparams_file, fetch_config, huggingface_cache_dir
        )
    if savedir is not None:
        logger.info("%s: loaded in place; savedir is used for hub ids only", source)
    return Path(source)


def load_overrides(yaml_file: str | Path, overrides=None) -> dict:
    """``overrides`` (a dict or YAML text) plus the folder's path for ``<model_folder>``.

    An exported folder's yaml has ``model_folder: !PLACEHOLDER``; every
    loader passes the folder's absolute path there (``folder_overrides``).

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "hyperparams.yaml").write_text("model_folder: !PLACEHOLDER\\n")
    >>> sorted(load_overrides(folder / "hyperparams.yaml", "window_hop: 15.0"))
    ['model_folder', 'window_hop']
    """
    if isinstance(overrides, str):
        overrides = YAML(typ="safe").load(overrides) or {}
    return {**folder_overrides(yaml_file), **(overrides or {})}


def check_model_folder(
    folder: str | Path,
    hparams_file: str = "hyperparams.yaml",
    trust_remote_code: bool = False,
    verify: bool = True,
) -> Path:
    """Checks a model folder before anything of it is loaded.

    Arguments
    ---------
    folder : str or Path
        The model folder.
    hparams_file : str
        Its yaml.
    trust_remote_code : bool
        Skip the allow-list check of the yaml (the user vouches for the folder).
    verify : bool
        Check ``SHA256SUMS``.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    FileNotFoundError
        No ``hparams_file`` in ``folder``.
    ModelFolderError
        The yaml builds or calls code outside the allow-list, or a file fails its sum.
    """
    folder = Path(folder)
    if not (folder / hparams_file).is_file():
        raise FileNotFoundError(
            f"{folder}: not a model folder (no {hparams_file}; a model is a local folder or a "
            "Hugging Face hub id org/name)"
        )
    check_yaml_targets(folder / hparams_file, trust_remote_code)
    if verify:
        verify_checksums(folder)
    return folder


def open_model_folder(
    source,
    hparams_file: str = "hyperparams.yaml",
    verify: bool = True,
    trust_remote_code: bool = False,
    savedir: str | Path | None = None,
    kwargs: dict | None = None,
) -> Path:
    """What an interface's ``from_hparams`` does before SpeechBrain loads: fetch, check, point.

    ``model_folder`` (a hub id is fetched and checked), ``check_model_folder``
    (a local folder's sums unless not ``verify``, the yaml's allow-list and
    paths), and the overrides with the folder's path (``load_overrides``).

    Arguments
    ---------
    source : str or Path
        A local folder or a hub id ``org/name``.
    hparams_file : str
        The yaml inside it.
    verify : bool
        Check a local folder's ``SHA256SUMS`` (a hub model's files always are).
    trust_remote_code : bool
        Skip the yaml's allow-list and path checks.
    savedir : str or Path, optional
        Where a hub model's files are collected.
    kwargs : dict, optional
        The interface's other ``from_hparams`` keyword arguments, updated in
        place: ``fetch_config`` (SpeechBrain's ``FetchConfig``) and
        ``huggingface_cache_dir`` are taken out (for a hub id), and
        ``overrides`` (the caller's) gets the folder's path.

    Returns
    -------
    Path
        The folder to load in place with ``kwargs``.
    """
    kwargs = {} if kwargs is None else kwargs
    fetch_config = kwargs.pop("fetch_config", None)
    cache_dir = kwargs.pop("huggingface_cache_dir", None)
    fetched = is_hub_id(source)  # then fetch_model_folder has checked every file
    folder = model_folder(source, savedir, hparams_file, fetch_config, cache_dir)
    check_model_folder(folder, hparams_file, trust_remote_code, verify and not fetched)
    kwargs["overrides"] = load_overrides(folder / hparams_file, kwargs.get("overrides"))
    return folder


class CheckedFolderLoading:
    """``from_hparams`` for SpeechBrain interfaces that load model folders: check, then load.

    Put before the SpeechBrain interface class (``class SLAP(CheckedFolderLoading,
    Pretrained)``): a hub id is fetched and every file checked, a local folder's
    ``SHA256SUMS``, yaml allow-list and paths are checked, and only then does the
    interface's own ``from_hparams`` load the folder in place.
    """

    @classmethod
    def from_hparams(
        cls,
        source,
        hparams_file="hyperparams.yaml",
        verify=True,
        trust_remote_code=False,
        savedir=None,
        **kwargs,
    ):
        """Loads a model folder or hub model, after checking its files and its yaml.

        ``hyperparams.yaml`` is executable configuration: unless
        ``trust_remote_code``, a yaml that builds or calls anything outside
        ``speechbrain_slap.model_folder.ALLOWED_YAML_TARGETS``, or points outside
        its folder, is refused before it is loaded.

        Arguments
        ---------
        source : str or Path
            The model folder, or a Hugging Face hub id ``org/name`` whose files
            are fetched with SpeechBrain's fetching (``SHA256SUMS`` first) and
            checked (``fetch_model_folder``).
        hparams_file : str
            The yaml inside it.
        verify : bool
            Check the files of a local folder against ``SHA256SUMS`` (a folder
            must have one) before anything is loaded; a hub model's files are
            always checked.
        trust_remote_code : bool
            Load a yaml that uses code outside the allow-list.
        savedir : str or Path, optional
            Where a hub model's files are collected (links into the Hugging
            Face cache); default: the cache itself. A local folder is read in
            place, so the files loaded are the files just verified.
        **kwargs
            As for the interface's ``from_hparams`` (``run_opts``,
            ``overrides``...); ``fetch_config`` (SpeechBrain's ``FetchConfig``:
            revision, token) and ``huggingface_cache_dir`` for a hub id.

        Returns
        -------
        The interface, with ``model_folder``: the local folder its files were read from.
        """
        folder = open_model_folder(source, hparams_file, verify, trust_remote_code, savedir, kwargs)
        model = super().from_hparams(source=str(folder), hparams_file=hparams_file, **kwargs)
        model.model_folder = folder  # where the files were read (a hub id's fetched folder)
        return model


def load_slap(
    folder: str | Path,
    run_opts: dict | None = None,
    batch_seconds: float = 300.0,
    trust_remote_code: bool = False,
    savedir: str | Path | None = None,
):
    """The ``SLAP`` inference interface of a model folder, checked (``check_model_folder``).

    Arguments
    ---------
    folder : str or Path
        The model folder, or a Hugging Face hub id ``org/name``.
    run_opts : dict, optional
        SpeechBrain run options (``{"device": "cuda"}``).
    batch_seconds : float
        Seconds of audio encoded per forward.
    trust_remote_code : bool
        Load a yaml that uses code outside the allow-list.
    savedir : str or Path, optional
        Where a hub id's files are collected (default: the Hugging Face cache).

    Returns
    -------
    speechbrain_slap.inference.SLAP

    Raises
    ------
    ModelFolderError
        Whatever keeps the folder from loading, with a message naming the folder.
    """
    from speechbrain_slap.inference import SLAP

    try:
        return SLAP.from_hparams(
            source=str(folder),
            run_opts=run_opts or {},
            batch_seconds=batch_seconds,
            trust_remote_code=trust_remote_code,
            savedir=savedir,
        )
    except ModelFolderError:
        raise
    except Exception as error:  # anything the folder's yaml or weights can raise
        message = str(error)
        if not message.startswith(str(folder)):  # else it already names the folder
            message = f"{folder}: cannot load this model folder ({type(error).__name__}: {error})"
        raise ModelFolderError(message) from error


def load_state_dict_strict(module, path: str | Path, model_folder: str | Path | None = None):
    """Loads a ``torch.save``-d state dict into ``module``, every key required.

    SpeechBrain's default parameter transfer is non-strict: a model folder whose
    keys do not match would leave the encoder at its random initialisation with
    only a logged warning. ``load_pretrained`` uses this as the ``Pretrainer``
    hook of every module.

    Arguments
    ---------
    module : torch.nn.Module
        Module to load into.
    path : str or Path
        State-dict file (read with ``weights_only=True``: nothing is unpickled).
    model_folder : str or Path, optional
        The folder the file comes from, named in the error.

    Example
    -------
    >>> import torch
    >>> path = getfixture("tmp_path") / "linear.ckpt"
    >>> torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    >>> module = torch.nn.Linear(2, 3)
    >>> load_state_dict_strict(module, path)
    >>> module.weight.shape
    torch.Size([3, 2])
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        folder = Path(model_folder) if model_folder is not None else Path(path).parent
        raise RuntimeError(
            f"{path}: does not fit the {type(module).__name__} the yaml builds; make the "
            f"architecture keys of the yaml match {folder}/hyperparams.yaml.\n{error}"
        ) from error


def load_pretrained(
    pretrainer,
    model_folder: str | Path,
    tokenizer_folder: str | Path | None = None,
    vocab_size: int | None = None,
):
    """Initialises a recipe's modules from a SLAP model folder, strictly.

    1. ``verify_checksums`` on the folder, and every file the ``pretrainer``
       needs must be there (a folder exported without ``ssl_head.ckpt`` and
       ``teacher.ckpt`` cannot continue the SSL loss).
    2. With ``tokenizer_folder``: the folder's caption tokenizer is copied to
       ``<tokenizer_folder>/<vocab_size>_unigram.model``, where the recipe's
       tokenizer (SpeechBrain's SentencePiece wrapper) loads it instead of
       training a new one, and where ``export_model`` finds it.
    3. Every loadable of the ``pretrainer`` that is a ``torch.nn.Module`` is
       loaded with ``load_state_dict_strict``.

    Arguments
    ---------
    pretrainer : speechbrain.utils.parameter_transfer.Pretrainer
        With ``loadables`` and ``paths`` (``<model_folder>/<name>.ckpt``).
    model_folder : str or Path
        The SLAP model folder.
    tokenizer_folder : str or Path, optional
        The recipe's tokenizer folder (fine-tuning with the captioning loss).
    vocab_size : int, optional
        The caption decoder's vocabulary size (must be the tokenizer's).

    Returns
    -------
    speechbrain.tokenizers.SentencePiece.SentencePiece or None
        The tokenizer (its ``.sp`` is the ``SentencePieceProcessor``), with ``tokenizer_folder``.

    Example
    -------
    >>> tokenizer = load_pretrained(  # doctest: +SKIP
    ...     hparams["pretrainer"], "slap_model", "save/tokenizer", vocab_size=5000
    ... )
    """
    import torch
    from speechbrain.utils.distributed import run_on_main

    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise ModelFolderError(f"{model_folder}: pretrained_model must be a SLAP model folder")
    verify_checksums(model_folder)
    needed = [Path(str(pretrainer.paths[name])) for name in pretrainer.loadables]
    if tokenizer_folder is not None:
        needed.append(model_folder / "tokenizer.ckpt")
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise ModelFolderError(
            f"{model_folder}: missing {missing}; a SLAP model folder holds the files "
            "`slap export` writes (audio_encoder.ckpt, audio_pooling.ckpt, ...), and "
            "fine-tuning with all three losses needs the SSL head and the EMA teacher, which "
            "it writes from a pretraining output"
        )

    tokenizer = None
    if tokenizer_folder is not None:
        from speechbrain.tokenizers.SentencePiece import SentencePiece

        target = Path(tokenizer_folder) / f"{vocab_size}_unigram.model"
        run_on_main(
            _copy_file, kwargs={"source": model_folder / "tokenizer.ckpt", "target": target}
        )
        tokenizer = SentencePiece(model_dir=str(tokenizer_folder), vocab_size=vocab_size)
        if tokenizer.sp.get_piece_size() != vocab_size:
            raise ModelFolderError(
                f"{model_folder}/tokenizer.ckpt has {tokenizer.sp.get_piece_size()} pieces but "
                f"the yaml's vocab_size is {vocab_size}: set vocab_size to the model's"
            )

    strict = functools.partial(load_state_dict_strict, model_folder=model_folder)
    pretrainer.add_custom_hooks(
        {
            name: strict
            for name, obj in pretrainer.loadables.items()
            if isinstance(obj, torch.nn.Module)
        }
    )
    run_on_main(pretrainer.collect_files)
    pretrainer.load_collected()
    logger.info("initialised %s from %s", sorted(pretrainer.loadables), model_folder)
    return tokenizer


def _copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def architecture_overrides(
    model_folder: str | Path, hparams_file: str | Path, trust_remote_code: bool = False
) -> dict:
    """The model folder's architecture values for the keys a recipe yaml has.

    A model folder's ``hyperparams.yaml`` records the values of
    ``ARCHITECTURE_KEYS`` it was trained with (``export_model``); a recipe that
    starts from the folder passes them as overrides, so it builds the
    folder's model without restating it on the command line. The folder's
    yaml is checked against the allow-list first (its values go into the
    recipe's yaml). A folder without ``hyperparams.yaml`` gives none.

    Arguments
    ---------
    model_folder : str or Path
        The model folder.
    hparams_file : str or Path
        The recipe yaml (only its top-level keys are overridden).
    trust_remote_code : bool
        Skip the allow-list check.

    Returns
    -------
    dict
        Key -> value (a round-trip yaml node where the value is tagged, e.g.
        a text encoder ``source`` given by ``!apply:``); a value inside the
        folder (``!ref <model_folder>/text_encoder``) becomes its absolute
        path, so the recipe builds the folder's own text encoder.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "hyperparams.yaml").write_text("embed_dim: 64\\ndepth: 3\\nother: 1\\n")
    >>> _ = (folder / "recipe.yaml").write_text("embed_dim: 768\\ndepth: 12\\nlr: 0.1\\n")
    >>> architecture_overrides(folder, folder / "recipe.yaml")
    {'embed_dim': 64, 'depth': 3}
    """
    folder_yaml = Path(model_folder) / "hyperparams.yaml"
    if not folder_yaml.is_file():
        return {}
    check_yaml_targets(folder_yaml, trust_remote_code)
    with open(folder_yaml, encoding="utf-8") as fin:
        theirs = YAML().load(fin) or {}
    with open(hparams_file, encoding="utf-8") as fin:
        ours = YAML().load(fin) or {}
    inside = folder_overrides(folder_yaml).get(FOLDER_KEY)
    values = {}
    for key in ARCHITECTURE_KEYS:
        if key in theirs and key in ours:
            value = theirs[key]
            # "!ref <model_folder>/text_encoder": the folder's own files, by absolute path
            reference = getattr(value, "value", None) if _tag(value) == "!ref" else None
            if inside and isinstance(reference, str) and reference.startswith(f"<{FOLDER_KEY}>"):
                value = inside + reference[len(f"<{FOLDER_KEY}>") :]
            values[key] = value
    return values


def _tag(node) -> str:
    """The HyperPyYAML tag of a round-trip node ('' for plain data)."""
    return str(getattr(getattr(node, "tag", None), "value", "") or "")


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
    >>> import io
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
        theirs = encoder_definitions(fin, folder_overrides(model_yaml) or None)
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
