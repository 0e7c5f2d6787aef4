"""The SLAP model architectures, shipped with the package.

``slap_tiny.yaml`` (6 x 128, CPU size) and ``slap_base.yaml`` (the paper's
12 x 768) define the features, the packed audio encoder and its pooling. The
``slap`` command, the benchmarks and the recipes read them from here, so a
plain ``pip install`` carries them.

Example
-------
>>> architecture_file("slap_tiny").name
'slap_tiny.yaml'
>>> architecture_file("slap_tiny").is_file()
True
"""

from pathlib import Path

ARCHITECTURES = ("slap_tiny", "slap_base")


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
