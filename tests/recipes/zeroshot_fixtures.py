"""Helpers of the zero-shot recipe tests: fake clips, recipe runs, result checks.

Each ``test_zeroshot_<dataset>.py`` builds a tiny fake copy of its dataset's
official layout, runs ``recipes/<Dataset>/zeroshot/evaluate.py`` on it in a
subprocess with the tiny model folder of the ``slap_model_folder`` fixture,
and checks what the recipe wrote with ``check_evaluation``: the accuracies
against a recomputation from ``predictions.csv``, and the predictions against
an independent zero-shot classification of each clip, one at a time, by the
same model loaded in the test process.
"""

import csv
import functools
import importlib.util
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Predictions whose two best classes are closer than this may flip between a
# packed batch and one clip at a time (float rounding), so they are not compared.
MIN_MARGIN = 1e-4


def write_clip(
    path: Path,
    seconds: float,
    sample_rate: int,
    channels: int = 1,
    subtype: str = "PCM_16",
    seed: int = 0,
    file_format: str | None = None,
) -> Path:
    """Writes a short tone-plus-noise clip (``seed`` sets its pitch and noise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    time = np.arange(int(round(seconds * sample_rate))) / sample_rate
    frequency = 200.0 + 150.0 * (seed % 17)
    wave = 0.3 * np.sin(2 * np.pi * frequency * time) + 0.02 * rng.standard_normal(time.size)
    audio = np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave
    soundfile.write(str(path), audio.astype(np.float32), sample_rate, subtype, format=file_format)
    return path


def load_module(path: Path, name: str):
    """Imports a recipe script (a prepare module) from its file."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fin:
        return list(csv.DictReader(fin))


def recipe_hparams(recipe: Path, data_folder: Path, model_folder: Path) -> dict:
    """The recipe's ``hparams/zeroshot.yaml`` with its placeholders filled."""
    overrides = {"data_folder": str(data_folder), "pretrained_model": str(model_folder)}
    with open(recipe / "hparams" / "zeroshot.yaml") as fin:
        return load_hyperpyyaml(fin, overrides)


def run_evaluate(recipe: Path, data_folder: Path, output_folder: Path, model_folder: Path, *extra):
    """Runs ``<recipe>/evaluate.py`` on CPU, one thread, offline; asserts exit code 0."""
    command = [
        sys.executable,
        str(recipe / "evaluate.py"),
        str(recipe / "hparams" / "zeroshot.yaml"),
        f"--data_folder={data_folder}",
        f"--output_folder={output_folder}",
        f"--pretrained_model={model_folder}",
        "--device=cpu",
        *extra,
    ]
    # One OpenMP thread: on a busy 2-core machine two threads are far slower.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-6000:]
    return process


@functools.cache
def _model(model_folder: str):
    from speechbrain_slap.inference import SLAP

    return SLAP.from_hparams(source=model_folder, run_opts={"device": "cpu"})


def reference_predictions(model_folder: Path, wavs, label_names, templates):
    """``(predicted index, margin)`` per file: each clip alone, prompts embedded one by one.

    Independent of ``speechbrain_slap.evaluation``: every prompt is embedded on
    its own and the class embedding is the renormalised mean of its prompts.
    """
    model = _model(str(model_folder))
    classes = []
    for name in label_names:
        prompts = [t.format(label=name.replace("_", " ")) for t in templates]
        mean = torch.stack([model.encode_text([p])[0] for p in prompts]).mean(dim=0)
        classes.append(mean / mean.norm())
    classes = torch.stack(classes)
    out = []
    for wav in wavs:
        similarity = model.encode_file(wav) @ classes.T
        top = similarity.topk(2)
        out.append((int(top.indices[0]), float(top.values[0] - top.values[1])))
    return out


def check_evaluation(
    output: Path,
    hparams: dict,
    manifest: list[dict],
    data_folder: Path,
    model_folder: Path,
    skipped_ids: tuple[str, ...] = (),
    label_field: str = "label",
) -> dict:
    """Checks ``results.json``, ``predictions.csv`` and the PNG a recipe wrote.

    ``manifest`` holds the rows of the prepared manifest; ``skipped_ids`` the
    clips expected to be unreadable. Returns the results.
    """
    results = json.loads((output / "results.json").read_text())
    predictions = read_csv(output / "predictions.csv")
    labels, label_names = list(hparams["labels"]), list(hparams["label_names"])
    templates = list(hparams["templates"])

    # Every readable clip once, with its own fold and label; unreadable ones skipped.
    assert results["n_clips"] == len(manifest)
    assert results["n_skipped"] == len(skipped_ids)
    assert sorted(s["ID"] for s in results["skipped"]) == sorted(skipped_ids)
    expected = {r["ID"]: r for r in manifest if r["ID"] not in skipped_ids}
    assert sorted(p["ID"] for p in predictions) == sorted(expected)
    for p in predictions:
        assert (p["fold"], p["label"]) == (
            expected[p["ID"]]["fold"],
            expected[p["ID"]][label_field],
        )
        assert p["prediction"] in labels
    assert (results["labels"], results["label_names"]) == (labels, label_names)
    assert results["templates"] == templates

    # Accuracies recomputed from the predictions file.
    correct = [p["label"] == p["prediction"] for p in predictions]
    assert results["n_evaluated"] == len(predictions)
    assert results["accuracy"] == pytest.approx(sum(correct) / len(correct))
    by_fold = defaultdict(list)
    for p, ok in zip(predictions, correct, strict=True):
        by_fold[p["fold"]].append(ok)
    assert set(results["fold_accuracy"]) == set(by_fold)
    for fold, oks in by_fold.items():
        assert results["fold_accuracy"][fold] == pytest.approx(sum(oks) / len(oks)), fold
        assert results["n_per_fold"][fold] == len(oks)
    fold_mean = sum(sum(oks) / len(oks) for oks in by_fold.values()) / len(by_fold)
    assert results["fold_mean_accuracy"] == pytest.approx(fold_mean)

    # Confusion matrix: row = true class, column = prediction, over all labels.
    matrix = torch.tensor(results["confusion_matrix"])
    assert matrix.shape == (len(labels), len(labels))
    reference = torch.zeros_like(matrix)
    for p in predictions:
        reference[labels.index(p["label"]), labels.index(p["prediction"])] += 1
    assert torch.equal(matrix, reference)
    assert (output / "confusion_matrix.png").read_bytes()[:8] == PNG_SIGNATURE

    # The predictions agree with each clip classified alone by the same model.
    wavs = [expected[p["ID"]]["wav"].replace("$data_root", str(data_folder)) for p in predictions]
    compared = 0
    for p, (index, margin) in zip(
        predictions, reference_predictions(model_folder, wavs, label_names, templates), strict=True
    ):
        if margin > MIN_MARGIN:
            assert p["prediction"] == labels[index], p["ID"]
            compared += 1
    assert compared >= len(predictions) // 2, "too many near-ties to compare predictions"
    return results
