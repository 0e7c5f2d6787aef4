"""Tests for metrics.caption_metrics: pycocoevalcap called directly as reference, hand cases.

The scoring tests need pycocoevalcap (the ``eval`` extra) and Java and are
skipped without them; each starts METEOR's Java process (a few seconds).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speechbrain_slap.metrics import _spice_score, caption_metrics

PREDICTIONS = [
    "A dog barks, then a man SHOUTS.",
    "rain falls on a tin roof",
    "",  # an empty generation scores 0 but still counts
    "birds are chirping while cars pass by",
]
REFERENCES = [
    ["A dog is barking and a man shouts.", "a man yells at a barking dog", "dog barks"],
    ["Heavy rain on a metal roof.", "rain is falling onto a roof"],
    ["a woman speaks", "someone is talking quietly", "a person talks", "speech", "a voice"],
    ["Birds chirp in the distance as traffic passes.", "birds sing near a busy road"],
]


@pytest.fixture
def coco():
    """Skips unless pycocoevalcap and Java are there; returns pycocoevalcap's scorers."""
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (the eval extra) is not installed")
    if shutil.which("java") is None:
        pytest.skip("Java is not installed (pycocoevalcap runs java)")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer, Cider, Meteor


def test_caption_metrics_match_pycocoevalcap(coco):
    """Same numbers as pycocoevalcap's tokenizer, CIDEr and METEOR called by hand."""
    tokenizer_class, cider_class, meteor_class = coco
    tokenizer = tokenizer_class()
    gold = tokenizer.tokenize(
        {clip: [{"caption": r} for r in refs] for clip, refs in enumerate(REFERENCES)}
    )
    candidates = tokenizer.tokenize({clip: [{"caption": p}] for clip, p in enumerate(PREDICTIONS)})
    expected_cider = cider_class().compute_score(gold, candidates)[0]
    expected_meteor = meteor_class().compute_score(gold, candidates)[0]

    metrics = caption_metrics(PREDICTIONS, REFERENCES)
    assert set(metrics) == {"CIDEr-D", "METEOR", "n_clips"}
    assert metrics["n_clips"] == 4
    assert metrics["CIDEr-D"] == pytest.approx(expected_cider, abs=1e-12)
    assert metrics["METEOR"] == pytest.approx(expected_meteor, abs=1e-12)
    assert 0.0 < metrics["METEOR"] < 1.0 and metrics["CIDEr-D"] > 0.0


def test_identical_captions_score_top_and_unrelated_ones_lower(coco):
    """Predictions equal to every reference (after lower-casing and dropping punctuation).

    With no word shared between the two clips, every 1- to 4-gram cosine is 1 and
    the lengths agree, so CIDEr-D = 10 * mean over n-gram orders of 1 = 10.
    """
    references = [["a dog barks loudly"] * 5, ["rain falls on the roof of a wooden house"] * 5]
    identical = caption_metrics(
        ["A dog barks, loudly!", "Rain falls on the roof of a wooden house."], references
    )
    assert identical["CIDEr-D"] == pytest.approx(10.0, abs=1e-9)
    assert identical["METEOR"] == pytest.approx(1.0, abs=1e-3)

    unrelated = caption_metrics(["traffic passes by", "someone plays violin"], references)
    assert unrelated["CIDEr-D"] == 0.0
    assert unrelated["METEOR"] < 0.1


def test_spice_without_corenlp_says_what_to_download(coco):
    """The CoreNLP jars are checked before anything runs or is downloaded."""
    from pycocoevalcap.spice.get_stanford_models import JAR, SPICEDIR, SPICELIB

    lib = Path(SPICEDIR) / SPICELIB
    if (lib / f"{JAR}.jar").is_file() and (lib / f"{JAR}-models.jar").is_file():
        pytest.skip("Stanford CoreNLP is installed for SPICE")
    with pytest.raises(RuntimeError, match="SPICE needs Stanford CoreNLP") as error:
        caption_metrics(["a dog barks"], [["a dog barks"]], spice=True)
    message = str(error.value)
    for expected in (
        f"{JAR}.jar",
        f"{JAR}-models.jar",
        str(lib),
        "stanford-corenlp-full-2015-12-09",
    ):
        assert expected in message


def test_spice_java_failure_gets_a_hint(coco, monkeypatch, tmp_path):
    """SPICE's jar failing (as it does on Java 17+) raises an error naming the fix."""
    spice_module = pytest.importorskip("pycocoevalcap.spice.spice")
    monkeypatch.setattr(spice_module, "get_stanford_models", lambda: None)
    monkeypatch.setattr(spice_module, "TEMP_DIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(spice_module, "CACHE_DIR", str(tmp_path / "cache"))

    def failing_java(command, **kwargs):
        raise subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(spice_module.subprocess, "check_call", failing_java)
    with pytest.raises(RuntimeError, match="Java 8 or 11"):
        _spice_score({0: ["a dog barks"]}, {0: ["a dog barks"]})


def test_missing_java_is_a_clear_error(coco, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="needs Java"):
        caption_metrics(["a dog barks"], [["a dog barks"]])


def test_missing_pycocoevalcap_is_a_clear_error(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "pycocoevalcap"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install speechbrain-slap\[eval\]"):
        caption_metrics(["a dog barks"], [["a dog barks"]])


@pytest.mark.parametrize(
    ("predictions", "references", "error", "message"),
    [
        ("a dog", [["a dog"]], TypeError, "predictions must be a list of strings"),
        (["a dog"], "a dog", TypeError, "references must be a list of lists"),
        (["a", "b"], [["a"]], ValueError, r"predictions \(2 clips\) and references \(1 clips\)"),
        ([], [], ValueError, "empty"),
        (["a", 3], [["a"], ["b"]], TypeError, r"predictions\[1\] must be a string"),
        (["a", "b"], [["a"], "b"], TypeError, r"references\[1\] must be a list of strings"),
        (["a", "b"], [["a"], []], ValueError, r"references\[1\] is empty"),
        (["a", "b"], [["a"], ["b", None]], TypeError, r"references\[1\]\[1\] must be a string"),
    ],
)
def test_caption_metrics_rejects_bad_inputs(predictions, references, error, message):
    with pytest.raises(error, match=message):
        caption_metrics(predictions, references)
