"""The model-folder yaml allow-list, wherever a tag can stand.

Each hostile file is checked by ``untrusted_yaml_targets`` and must be refused;
for the ones that would run code, the test also shows that HyperPyYAML itself
runs it (a marker file appears), so the refusal is what protects the user.
Clean files (the exported model folders' yaml among them) pass.
"""

import re
import textwrap

import pytest

from speechbrain_slap.model_folder import (
    ModelFolderError,
    check_yaml_targets,
    path_escapes,
    untrusted_yaml_targets,
)
from speechbrain_slap.model_folder.yaml_check import MAX_YAML_NODES, folder_overrides


def _write(tmp_path, text: str):
    path = tmp_path / "hyperparams.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """A module beside the model folder (the current directory is often on sys.path)
    that creates ``tmp_path / "ran"`` when it is imported; returns that path."""
    marker = tmp_path / "ran"
    name = f"slap_payload_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\ndef hit(*a, **k):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker, f"!apply:{name}.hit"


# Each entry: (name, yaml text with {call} where a code-running tag goes).
ATTACKS = [
    ("value", "x: {call}\n"),
    ("key", "extra:\n  {call} : 1\n"),
    ("complex key", "? {call}\n: 1\n"),
    ("flow mapping key", "flow: {{{call} : 1, k: 2}}\n"),
    ("flow sequence", "items: [1, {call} '']\n"),
    ("anchored then aliased", "base: &b\n  q: {call}\nuse: *b\n"),
    ("merge key", "base: &b {{q: {call} ''}}\nm:\n  <<: *b\n  r: 1\n"),
    ("nested key", "a:\n  b:\n    {call} : 1\n"),
]


@pytest.mark.parametrize(("name", "template"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_every_tag_position_is_checked(tmp_path, payload, name, template):
    from hyperpyyaml import load_hyperpyyaml

    marker, call = payload
    path = _write(tmp_path, template.format(call=call))
    assert untrusted_yaml_targets(path), f"{name}: not refused"
    with pytest.raises(ModelFolderError, match="outside the allow-list"):
        check_yaml_targets(path)
    assert not marker.exists()
    # Without the check, HyperPyYAML runs it (where it builds keys at all).
    try:
        with open(path) as fin:
            load_hyperpyyaml(fin)
    except Exception:
        pass
    if name not in ("complex key",):
        assert marker.exists(), f"{name}: HyperPyYAML did not run it either"


def test_tuple_scalars_are_loaded_as_yaml_and_checked(tmp_path, payload):
    from hyperpyyaml import load_hyperpyyaml

    marker, call = payload
    text = f"t: (!!python/object/apply:{call.partition(':')[2]} [], 1)\n"
    path = _write(tmp_path, text)
    found = untrusted_yaml_targets(path)
    assert found and "tuple" in found[0]
    with open(path) as fin:  # HyperPyYAML's tuple resolver would run it
        load_hyperpyyaml(fin)
    assert marker.exists()
    assert untrusted_yaml_targets(_write(tmp_path, "t: (1, 2.5, abc)\n")) == []


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        # dunder and private attribute paths, even when they end in plain data
        (
            "g: !name:speechbrain_slap.lobes.features.SLAPFbank.__init__.__globals__\n",
            "__globals__",
        ),
        ("p: !name:speechbrain_slap.lobes.features._private\n", "_private"),
        # a tagged key nested in an allowed call
        ("m: !new:torch.nn.Linear\n  !name:torch.nn.ReLU : 2\n", "(on a mapping key)"),
        # a mapping or a sequence as a key
        ("? [a, b]\n: 1\n", "(on a mapping key)"),
        # YAML's own tags, spelled every way
        ("x: !!python/name:os.system\n", "python/name:os.system"),
        ("x: !<tag:yaml.org,2002:python/object/apply:os.getpid> []\n", "python/object"),
        ("%TAG !p! tag:yaml.org,2002:python/\n---\nx: !p!object/apply:os.getpid []\n", "python"),
        ("x: !applyref:os.getpid []\n", "!applyref:os.getpid"),
        ("x: !module:os\n", "!module:os"),
        ("x: !include:/etc/passwd\n", "!include"),
        # reference arithmetic that never ends
        ("n: 9\nx: !ref <n> ** 9 ** 9 ** 9\n", "reference arithmetic"),
        ("s: \"'a'\"\nx: !ref <s> * 999999999\n", "reference arithmetic"),
        ("n: 9\ny: <n> ** 99999\nx: !ref <y>\n", "reference arithmetic"),
        # recursion through aliases
        ("a: &a [1, *a]\n", "recursive alias"),
    ],
)
def test_hostile_tags_are_named(tmp_path, text, flagged):
    found = untrusted_yaml_targets(_write(tmp_path, text))
    assert any(flagged in item for item in found), found


def test_alias_bombs_are_refused_before_anything_expands_them(tmp_path):
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    found = untrusted_yaml_targets(_write(tmp_path, "\n".join(lines) + "\n"))
    assert found == [f"aliases that expand to more than {MAX_YAML_NODES} nodes"]


def test_unreadable_and_oversized_files(tmp_path):
    path = tmp_path / "hyperparams.yaml"
    path.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ModelFolderError, match="cannot read"):
        untrusted_yaml_targets(path)
    path.write_text("a: [1, 2\n")
    with pytest.raises(ModelFolderError, match="not valid YAML"):
        untrusted_yaml_targets(path)
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    found_or_error = None
    try:
        found_or_error = untrusted_yaml_targets(path)
    except ModelFolderError as error:
        found_or_error = str(error)
    assert "deep" in str(found_or_error)
    path.write_text("a: 1\n" * 300_000)
    assert "bytes" in untrusted_yaml_targets(path)[0]


def test_clean_files_pass(tmp_path, slap_model_folder):
    assert untrusted_yaml_targets(slap_model_folder / "hyperparams.yaml") == []
    text = """
    n: 4
    size: !ref <n> + 2
    folder: !ref <out>/save
    out: results
    when: 2026-12-06
    pair: (1, 2)
    layer: !new:torch.nn.Linear
        in_features: !ref <n>
        out_features: !ref <size>
    act: !name:torch.nn.functional.relu
    base: &b {a: 1}
    merged:
        <<: *b
        c: 2
    """
    assert untrusted_yaml_targets(_write(tmp_path, text)) == []


# -- paths: a model folder's yaml points only inside the folder ----------
@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("text_source: !ref <model_folder>/../other_model", "text_source"),
        ("text_source: /usr/share/minilm", "text_source"),
        ("nested: {deep: [1, ../../etc/passwd]}", "nested.deep[1]"),
        ("text_source: ~/minilm", "text_source"),
        ("text_source: text_encoder/../../x", "text_source"),
    ],
)
def test_paths_out_of_the_folder_are_refused_naming_the_key(tmp_path, line, key):
    folder = tmp_path / "model"
    folder.mkdir()
    text = f"model_folder: !PLACEHOLDER\n{line}\n"
    text += "encoder: !new:torch.nn.Identity\n    source: !ref <model_folder>/text_encoder\n"
    path = folder / "hyperparams.yaml"
    path.write_text(text)
    assert untrusted_yaml_targets(path) == []  # no code outside the allow-list
    assert [escape.split(": ")[0] for escape in path_escapes(path)] == [key]
    with pytest.raises(
        ModelFolderError, match=rf"paths outside the model folder: {re.escape(key)}: "
    ):
        check_yaml_targets(path)
    check_yaml_targets(path, trust_remote_code=True)  # the user vouches for the folder


def test_paths_inside_the_folder_and_hub_ids_pass(tmp_path, slap_model_folder):
    assert path_escapes(slap_model_folder / "hyperparams.yaml") == []
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "hyperparams.yaml"
    path.write_text(
        "model_folder: !PLACEHOLDER\n"
        "text_source: !ref <model_folder>/text_encoder\n"
        f"absolute_inside: {folder.resolve()}/text_encoder/config.json\n"
        "hub: answerdotai/ModernBERT-base\n"
        "ratio: 0.5\n"
    )
    assert path_escapes(path) == []
    check_yaml_targets(path)
    # the override is the folder's own path, wherever the folder is
    assert folder_overrides(path) == {"model_folder": str(folder.resolve())}


def test_linked_files_inside_the_folder_pass(tmp_path):
    """A folder path that is a symlink (a savedir of hub links, a copy linking its weights)
    is inside the folder: containment is lexical, SHA256SUMS checks what the links hold."""
    elsewhere = tmp_path / "elsewhere" / "text_encoder"
    elsewhere.mkdir(parents=True)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "text_encoder").symlink_to(elsewhere, target_is_directory=True)
    path = folder / "hyperparams.yaml"
    path.write_text("model_folder: !PLACEHOLDER\ntext_source: !ref <model_folder>/text_encoder\n")
    assert path_escapes(path) == []
    path.write_text(f"text_source: {elsewhere}\n")  # the link's target, named directly
    assert path_escapes(path) == [f"text_source: '{elsewhere}'"]


def test_relative_paths_that_exist_here_are_outside_the_folder(tmp_path, monkeypatch):
    """``org/name`` is a hub id, unless a folder of that name is in the current directory:
    then transformers would read that folder, which SHA256SUMS does not cover."""
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "hyperparams.yaml"
    path.write_text("text_source: org/name\n")
    monkeypatch.chdir(tmp_path)
    assert path_escapes(path) == []
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert path_escapes(path) == ["text_source: 'org/name'"]
