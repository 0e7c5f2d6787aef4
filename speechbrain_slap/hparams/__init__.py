"""The SLAP model architectures, shipped with the package: the one definition of the model.

``slap_tiny.yaml`` (6 x 128, CPU size) and ``slap_base.yaml`` (the paper's
12 x 768) define the features, the packed audio encoder and its pooling. The
recipes include them (``architecture: !include:...``, their scalars passed in
as the include's overrides), the ``slap`` command, the benchmarks and the
tagging export read them from here, so a plain ``pip install`` carries them.

``ENCODER_ARCHITECTURE_KEYS`` are their scalars that decide what the encoder
computes; ``ARCHITECTURE_KEYS`` adds those of the text encoder, caption
decoder and SSL head that the pretraining and fine-tuning recipes spell the
same way. A model folder records these values, and a recipe started from a
model folder takes them from it (``speechbrain_slap.model_folder.architecture_overrides``).

Example
-------
>>> architecture_file("slap_tiny").name
'slap_tiny.yaml'
>>> architecture_file("slap_tiny").is_file()
True
"""

import io
from pathlib import Path

ARCHITECTURES = ("slap_tiny", "slap_base")
ENCODER_ARCHITECTURE_KEYS = (
    "sample_rate",
    "n_mels",
    "feature_mean",
    "feature_std",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_hidden",
    "local_window",
    "local_attention",
)
ARCHITECTURE_KEYS = ENCODER_ARCHITECTURE_KEYS + (
    "text_source",
    "text_num_heads",
    "text_freeze",
    "text_max_length",
    "vocab_size",
    "max_caption_tokens",
    "decoder_dim",
    "decoder_layers",
    "decoder_heads",
    "decoder_ffn",
    "decoder_time_positions",
    "n_prototypes",
    "ssl_hidden",
    "ssl_bottleneck",
)


def architecture_file(name: str) -> Path:
    """Path of a shipped architecture file: ``"slap_tiny"`` or ``"slap_base"``.

    Arguments
    ---------
    name : str
        Architecture name, with or without ``.yaml``.

    Returns
    -------
    Path
        The yaml file inside the installed package.
    """
    stem = name.removesuffix(".yaml")
    if stem not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; expected one of {ARCHITECTURES}")
    return Path(__file__).resolve().parent / f"{stem}.yaml"


def architecture_yaml(values: dict, name: str = "slap_base") -> str:
    """The text of an architecture file with its scalars set to ``values``.

    Arguments
    ---------
    values : dict
        Scalars of the file (e.g. ``ENCODER_ARCHITECTURE_KEYS``) and their values.
    name : str
        The architecture file whose definitions are used.

    Returns
    -------
    str
        HyperPyYAML text defining ``compute_features``, ``audio_encoder`` and
        ``audio_pooling`` (the file's header comment left out).

    Example
    -------
    >>> text = architecture_yaml({"embed_dim": 32, "depth": 3})
    >>> "embed_dim: 32" in text and "depth: 3" in text and "audio_encoder: !new:" in text
    True
    """
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: the !new: and !ref tags are kept
    with open(architecture_file(name), encoding="utf-8") as fin:
        tree = yaml.load(fin)
    unknown = sorted(set(values) - set(tree))
    if unknown:
        raise KeyError(f"{name}.yaml has no scalars {unknown}")
    tree.ca.comment = None
    for key, value in values.items():
        tree[key] = value
    stream = io.StringIO()
    yaml.dump(tree, stream)
    return stream.getvalue()
