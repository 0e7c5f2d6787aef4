"""Every top-level key of a recipe yaml is used by the yaml itself or by the recipe's Python.

For each ``recipes/**/hparams/*.yaml`` (recipes added later are picked up), a
top-level key counts as used when

* the same yaml refers to it (``<key>``, ``<key[...]>`` or ``<key.attr>``,
  as in ``!ref <key>``), comments left out;
* a Python script reads it: the ``*.py`` files of the recipe folder and of its
  parents up to ``recipes/<Dataset>/``, and the ``speechbrain_slap`` modules
  those scripts import (the Brain class of a recipe usually lives there).
  Reads are found in the syntax tree, on any object named ``hparams``
  (``hparams``, ``self.hparams``): ``hparams["key"]``, ``hparams.key``,
  ``hparams.get("key")``, ``getattr(hparams, "key")``, ``"key" in hparams``;
  an f-string subscript such as ``hparams[f"{split}_csv"]`` matches every key
  it can spell (``train_csv``, ``valid_csv``, ...);
* or SpeechBrain reads it itself (``ALLOWED_KEYS``).

Top-level keys are read line by line (``key:`` at the start of a line), so the
yaml is never instantiated.
"""

import ast
import re
from pathlib import Path

import pytest
from speechbrain.core import RunOptions

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"

TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):", re.MULTILINE)
YAML_REFERENCE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)[\[\].>]")
YAML_COMMENT = re.compile(r"(^|\s)#.*$", re.MULTILINE)

# Keys SpeechBrain reads without the recipe naming them: ``Brain.__init__``
# takes its run options (precision, max_grad_norm, grad_accumulation_factor,
# ckpt_interval_minutes, ...) from hparams, and ``seed`` is the conventional
# seed of ``__set_seed``. Keys starting with ``__`` (``__set_seed: !apply:...``)
# are run by HyperPyYAML while loading and are allowed by ``is_allowed``.
ALLOWED_KEYS = {"seed"} | (set(RunOptions().as_dict()) - {"overridden_args"})


def is_allowed(key: str) -> bool:
    """Whether SpeechBrain or HyperPyYAML uses ``key`` on its own."""
    return key.startswith("__") or key in ALLOWED_KEYS


def top_level_keys(yaml_text: str) -> list[str]:
    """Top-level keys in file order (lines starting with ``key:``)."""
    return TOP_LEVEL_KEY.findall(yaml_text)


def yaml_references(yaml_text: str) -> set[str]:
    """Keys that the yaml refers to with ``<key...>``, outside comments."""
    return set(YAML_REFERENCE.findall(YAML_COMMENT.sub("", yaml_text)))


def recipe_scripts(yaml_path: Path, recipes_root: Path) -> list[Path]:
    """``*.py`` of the recipe folder (above ``hparams/``) and its parents up to the dataset."""
    recipe_folder = yaml_path.parent.parent
    relative = recipe_folder.relative_to(recipes_root)
    folders = [
        recipes_root.joinpath(*relative.parts[:n]) for n in range(len(relative.parts), 0, -1)
    ]
    return sorted(path for folder in folders for path in folder.glob("*.py"))


def imported_package_modules(tree: ast.Module, repo: Path, package: str) -> list[Path]:
    """Source files of the ``package`` modules (and submodules) a script imports."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            # ``from package import brain`` imports a submodule.
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    files = []
    for name in names:
        if name.split(".")[0] != package:
            continue
        base = repo.joinpath(*name.split("."))
        files += [f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()]
    return files


def is_hparams(node: ast.AST) -> bool:
    """``hparams`` or ``<anything>.hparams``."""
    return (isinstance(node, ast.Name) and node.id == "hparams") or (
        isinstance(node, ast.Attribute) and node.attr == "hparams"
    )


def constant_string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def key_pattern(node: ast.AST) -> re.Pattern | None:
    """The keys a string subscript can name: a constant, or an f-string's pattern."""
    if (text := constant_string(node)) is not None:
        return re.compile(re.escape(text))
    if isinstance(node, ast.JoinedStr):
        parts = [
            re.escape(part.value) if isinstance(part, ast.Constant) else "[A-Za-z0-9_]+"
            for part in node.values
        ]
        return re.compile("".join(parts))
    return None


def python_reads(tree: ast.Module) -> list[re.Pattern]:
    """Patterns of the hparams keys a module reads."""
    patterns = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and is_hparams(node.value):
            key = node.slice
        elif isinstance(node, ast.Attribute) and is_hparams(node.value):
            key = ast.Constant(node.attr)
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            if isinstance(function, ast.Attribute) and is_hparams(function.value):
                key = node.args[0]  # hparams.get("key"), hparams.pop("key")
            elif isinstance(function, ast.Name) and function.id in ("getattr", "hasattr"):
                key = node.args[1] if len(node.args) > 1 and is_hparams(node.args[0]) else None
        elif isinstance(node, ast.Compare) and any(is_hparams(c) for c in node.comparators):
            key = node.left  # "key" in hparams
        if key is not None and (pattern := key_pattern(key)) is not None:
            patterns.append(pattern)
    return patterns


def unused_keys(yaml_path: Path, recipes_root: Path = RECIPES, repo: Path = REPO) -> list[str]:
    """Top-level keys of ``yaml_path`` that nothing uses, in file order."""
    yaml_text = yaml_path.read_text()
    referenced = yaml_references(yaml_text)
    reads = []
    for script in recipe_scripts(yaml_path, recipes_root):
        tree = ast.parse(script.read_text(), filename=str(script))
        reads += python_reads(tree)
        for module in imported_package_modules(tree, repo, "speechbrain_slap"):
            reads += python_reads(ast.parse(module.read_text(), filename=str(module)))
    return [
        key
        for key in top_level_keys(yaml_text)
        if not is_allowed(key)
        and key not in referenced
        and not any(pattern.fullmatch(key) for pattern in reads)
    ]


RECIPE_YAMLS = sorted(RECIPES.glob("**/hparams/*.yaml"))


def test_recipe_yamls_are_found():
    assert RECIPE_YAMLS, f"no recipes/**/hparams/*.yaml under {RECIPES}"


@pytest.mark.parametrize(
    "yaml_path", RECIPE_YAMLS, ids=[str(p.relative_to(RECIPES)) for p in RECIPE_YAMLS]
)
def test_every_top_level_key_is_used(yaml_path):
    unused = unused_keys(yaml_path)
    assert not unused, (
        f"{yaml_path.relative_to(REPO)}: top-level keys used neither in the yaml nor by the "
        f"recipe's Python: {unused}"
    )


TOY_YAML = """\
# A toy recipe; the comment names <forgotten> but does not use it.
seed: 1
__set_seed: !apply:speechbrain.utils.seed.seed_everything [!ref <seed>]
data_folder: data
train_csv: !ref <data_folder>/train.csv
valid_csv: valid.csv
loss_weights:
    clap: 1.0
clap_weight: !ref <loss_weights[clap]>
lr: 0.1
read_by_get: 1
read_by_brain: 2
read_by_getattr: 3
checked_with_in: 4
read_by_prepare: 5
max_grad_norm: 5.0            # a SpeechBrain run option
forgotten: 3
unused_block:
    nested_key: 1             # not top-level, not checked
"""

TOY_TRAIN = """\
from speechbrain_slap.toy_brain import ToyBrain

hparams = {}
for split in ("train", "valid"):
    print(hparams[f"{split}_csv"])
print(hparams["clap_weight"], hparams.get("read_by_get"))
if "checked_with_in" in hparams:
    pass
"""

TOY_BRAIN = """\
class ToyBrain:
    def fit(self):
        return self.hparams.read_by_brain, getattr(self.hparams, "read_by_getattr"), self.hparams.lr
"""


def test_checker_finds_unused_keys(tmp_path):
    """A toy recipe that uses every rule of the checker and leaves two keys unused."""
    recipe = tmp_path / "recipes" / "ToyDataset" / "toy_task"
    (recipe / "hparams").mkdir(parents=True)
    (recipe / "hparams" / "toy.yaml").write_text(TOY_YAML)
    (recipe / "train.py").write_text(TOY_TRAIN)
    (recipe.parent / "toy_prepare.py").write_text(
        'def prepare(hparams):\n    hparams["read_by_prepare"]\n'
    )
    (tmp_path / "speechbrain_slap").mkdir()
    (tmp_path / "speechbrain_slap" / "toy_brain.py").write_text(TOY_BRAIN)

    toy_yaml = recipe / "hparams" / "toy.yaml"
    assert unused_keys(toy_yaml, tmp_path / "recipes", tmp_path) == ["forgotten", "unused_block"]

    # Without the Brain module and the dataset-level script, their keys are unused too.
    (tmp_path / "speechbrain_slap" / "toy_brain.py").unlink()
    (recipe.parent / "toy_prepare.py").unlink()
    assert unused_keys(toy_yaml, tmp_path / "recipes", tmp_path) == [
        "lr",
        "read_by_brain",
        "read_by_getattr",
        "read_by_prepare",
        "forgotten",
        "unused_block",
    ]
