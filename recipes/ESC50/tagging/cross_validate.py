#!/usr/bin/env python3
"""ESC-50 5-fold cross-validation: ``train.py`` once per fold, then per-fold and mean accuracy.

    python recipes/ESC50/tagging/cross_validate.py recipes/ESC50/tagging/hparams/slap_base.yaml \
        --data_folder=/data/ESC-50-master --pretrained_model=/models/slap_base \
        --cv_folder=results/ESC50_tagging/cv

Fold ``K`` runs in its own process as ``train.py HPARAMS --test_fold=K
--output_folder=<cv_folder>/fold_K`` plus every option this script does not
know (they are passed on, e.g. ``--precision=bf16`` or ``--debug``). A fold
whose ``test_results.json`` exists is not run again. ``--folds=1,3`` runs a
subset; ``--summarize_only`` only collects the results of folds run by other
means (e.g. in parallel on several GPUs with the same ``--output_folder``
pattern). Writes ``<cv_folder>/cross_validation.json``::

    {"folds": {"1": 0.91, ...}, "mean_accuracy": ..., "std_accuracy": ..., "n_folds": 5}

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
ALL_FOLDS = "1,2,3,4,5"


def fold_folder(cv_folder: Path, fold: int) -> Path:
    """Output folder of one fold's run."""
    return cv_folder / f"fold_{fold}"


def run_fold(hparams_file: str, cv_folder: Path, fold: int, extra: list[str]) -> None:
    """Trains and tests one fold in a subprocess, unless its results exist."""
    output = fold_folder(cv_folder, fold)
    if (output / "test_results.json").is_file():
        print(f"fold {fold}: {output / 'test_results.json'} exists, not run again")
        return
    command = [
        sys.executable,
        str(TRAIN_SCRIPT),
        hparams_file,
        f"--test_fold={fold}",
        f"--output_folder={output}",
        *extra,
    ]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def summarize(cv_folder: Path, folds: list[int]) -> dict:
    """Per-fold test accuracy, mean and (population) standard deviation.

    Arguments
    ---------
    cv_folder : Path
        Folder holding ``fold_K/test_results.json``.
    folds : list of int
        The folds to collect.

    Returns
    -------
    dict
        ``folds`` (fold -> accuracy), ``mean_accuracy``, ``std_accuracy``, ``n_folds``.
    """
    accuracies = {}
    for fold in folds:
        path = fold_folder(cv_folder, fold) / "test_results.json"
        if not path.is_file():
            raise FileNotFoundError(f"fold {fold}: {path} not found (the fold did not finish)")
        accuracies[str(fold)] = json.loads(path.read_text())["accuracy"]
    values = list(accuracies.values())
    return {
        "folds": accuracies,
        "mean_accuracy": statistics.fmean(values),
        "std_accuracy": statistics.pstdev(values),
        "n_folds": len(values),
    }


def main(argv: list[str]) -> dict:
    """Parses the options, runs the folds and writes ``cross_validation.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("hparams_file")
    parser.add_argument("--folds", default=ALL_FOLDS, help="comma-separated, default 1,2,3,4,5")
    parser.add_argument("--cv_folder", default="results/ESC50_tagging/cv")
    parser.add_argument("--summarize_only", action="store_true")
    args, extra = parser.parse_known_args(argv)
    try:
        folds = [int(fold) for fold in args.folds.split(",")]
    except ValueError:
        parser.error(f"--folds must be comma-separated integers, got {args.folds!r}")
    if not folds or any(not 1 <= fold <= 5 for fold in folds):
        parser.error(f"--folds must be within 1..5, got {args.folds!r}")
    cv_folder = Path(args.cv_folder)
    if not args.summarize_only:
        for fold in folds:
            run_fold(args.hparams_file, cv_folder, fold, extra)
    summary = summarize(cv_folder, folds)
    cv_folder.mkdir(parents=True, exist_ok=True)
    (cv_folder / "cross_validation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| fold | accuracy |\n|---|---|")
    for fold, value in summary["folds"].items():
        print(f"| {fold} | {100 * value:.2f} |")
    print(f"| mean | {100 * summary['mean_accuracy']:.2f} +- {100 * summary['std_accuracy']:.2f} |")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
