#!/usr/bin/env python3
"""The loss ablation of paper Table 5 on the embedded corpus, at equal wall time.

Four runs of ``train.py`` per training seed: CLAP only, CLAP + SSL, CLAP +
captioning, and all three (the recipe's weights). They get equal wall time,
not equal steps: SSL adds a teacher pass and a second student view, so at
equal steps CLAP alone would be the cheapest run, not an equal one. How much
each set of losses costs per step is measured first, on this machine, by
``diagnose.py time`` (the calibrations of all four alternate, so a change of
machine load shifts them alike); each run then gets the number of epochs whose
estimated time is nearest to the all-three run's ``--epochs``. Every run
evaluates its valid-best checkpoint on the test split, as the recipe does.

Writes ``ablation.json`` (every run) and ``ablation.md`` (mean and std over the
seeds of t2a/a2t R@1, zero-shot accuracy and the frame probe) into
``--output``, and prints the table. Runs whose ``test_results.json`` exists are
not repeated, and the calibration is kept, so an interrupted ablation (or
one given more seeds) continues where it stopped (an ablation with other
train.py settings needs its own ``--output``)::

    python recipes/pretrain/ablation.py recipes/pretrain/hparams/pretrain_tiny_synth.yaml \\
        --seeds 1 2 3 --output results/ablation

Other ``--key=value`` arguments are passed to every ``train.py`` run, and those
that set recipe yaml keys to the calibration too; e.g. ``--ssl_view=dual`` gives
the SSL runs the paper's unmasked view for CLAP and captioning (the recipe's
``shared`` view feeds them the masked one).

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> loss weights; "all three" keeps the recipe's own weights.
CONFIGS = {
    "CLAP only": {"clap": 1.0, "ssl": 0.0, "cap": 0.0},
    "CLAP + SSL": {"clap": 1.0, "ssl": 1.0, "cap": 0.0},
    "CLAP + captioning": {"clap": 1.0, "ssl": 0.0, "cap": 0.5},
    "all three": {"clap": 1.0, "ssl": 1.0, "cap": 0.5},
}
METRICS = (
    ("t2a_R@1", "t2a R@1"),
    ("a2t_R@1", "a2t R@1"),
    ("zeroshot_accuracy", "zero-shot acc."),
    ("frame_probe_accuracy", "frame probe acc."),
)


def slug(name: str) -> str:
    """``"CLAP + SSL"`` -> ``"clap_ssl"``: the run folder of a configuration."""
    return "_".join(part for part in name.lower().replace("+", " ").split() if part)


def weights_override(weights: dict) -> str:
    """The ``--loss_weights`` value of ``train.py`` for ``weights``."""
    return "{" + ", ".join(f"{key}: {value}" for key, value in weights.items()) + "}"


def yaml_overrides(train_args: list[str], hparams: dict) -> list[str]:
    """The ``--key=value`` train.py arguments that set keys of the recipe yaml, as ``key: value``.

    The calibration times steps with them (``--ssl_view=dual`` changes what a step
    costs); run options such as ``--device`` are not yaml keys and are left out.
    """
    pairs = (arg[2:].split("=", 1) for arg in train_args)
    return [f"{key}: {value}" for key, value in pairs if key in hparams]


def calibrate(args, config: str, data_folder: Path) -> dict:
    """Measured ms per training step and batches per epoch of one configuration."""
    target = Path(args.output) / "calibration" / f"{slug(config)}.json"
    if target.exists():  # an ablation continued in the same folder keeps its epochs
        return json.loads(target.read_text(encoding="utf-8"))
    target.parent.mkdir(parents=True, exist_ok=True)
    entries = [
        f"data_folder: {data_folder}",
        f"output_folder: {target.parent / slug(config)}",
        f"loss_weights: {weights_override(CONFIGS[config])}",
        *args.yaml_overrides,
    ]
    overrides = "{" + ", ".join(entries) + "}"
    command = [
        sys.executable,
        str(HERE / "diagnose.py"),
        "time",
        args.hparams,
        "--steps",
        str(args.calibration_steps),
        "--warmup",
        "2",
        "--overrides",
        overrides,
        "--json",
        str(target),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(target.read_text(encoding="utf-8"))


def epochs_for(step_ms: dict, batches: int, epochs_all: int) -> dict:
    """Epochs per configuration whose time is nearest to ``epochs_all`` of "all three"."""
    budget = epochs_all * batches * step_ms["all three"]
    return {
        name: max(1, round(budget / (batches * ms))) if name != "all three" else epochs_all
        for name, ms in step_ms.items()
    }


def run(args, config: str, seed: int, epochs: int, data_folder: Path) -> dict:
    """One training run (or its earlier result); returns its record."""
    folder = Path(args.output) / slug(config) / str(seed)
    results = folder / "test_results.json"
    record_file = folder / "ablation_run.json"
    if not results.exists():
        command = [
            sys.executable,
            str(HERE / "train.py"),
            args.hparams,
            f"--seed={seed}",
            f"--number_of_epochs={epochs}",
            f"--loss_weights={weights_override(CONFIGS[config])}",
            f"--output_folder={folder}",
            f"--data_folder={data_folder}",
            "--noprogressbar",
            *args.train_args,
        ]
        folder.mkdir(parents=True, exist_ok=True)
        print(f"ablation: {config}, seed {seed}, {epochs} epochs -> {folder}", flush=True)
        start = time.perf_counter()
        log_file = folder / "ablation_stdout.txt"
        with open(log_file, "w", encoding="utf-8") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise SystemExit(f"ablation: {config}, seed {seed} failed (exit {code}): {log_file}")
        wall = time.perf_counter() - start
        record_file.write_text(json.dumps({"wall_s": wall, "epochs": epochs}) + "\n")
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.exists() else {}
    if record.get("epochs", epochs) != epochs:
        raise SystemExit(
            f"ablation: {record_file} ran {record['epochs']} epochs, this ablation gives "
            f"{config} {epochs}: remove {folder} or use another --output"
        )
    return {
        "config": config,
        "seed": seed,
        "epochs": record.get("epochs", epochs),
        "wall_s": record.get("wall_s", math.nan),
        **json.loads(results.read_text(encoding="utf-8")),
    }


def mean_std(values: list[float]) -> str:
    """``"12.3 ± 1.0"`` in percent (std over seeds; 0 for one seed)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def table(records: list[dict]) -> str:
    """The markdown table: one row per configuration, mean ± std over seeds."""
    header = ["losses", "seeds", "epochs", "wall time / run"] + [label for _, label in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config in CONFIGS:
        rows = [r for r in records if r["config"] == config]
        if not rows:
            continue
        walls = [r["wall_s"] for r in rows if not math.isnan(r["wall_s"])]
        wall = f"{statistics.mean(walls) / 60:.1f} min" if walls else "n/a"
        cells = [
            config,
            " ".join(str(r["seed"]) for r in rows),
            " ".join(sorted({str(r["epochs"]) for r in rows})),
            wall,
        ]
        cells += [mean_std([r[key] for r in rows]) for key, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_hparams(path: str, output: str) -> dict:
    """The recipe yaml (for its ``data_folder`` and ``number_of_epochs``)."""
    from hyperpyyaml import load_hyperpyyaml

    with open(path, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, {"output_folder": str(Path(output) / "hparams")})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hparams", help="the recipe yaml, e.g. hparams/pretrain_tiny_synth.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=None, help="epochs of 'all three' (yaml)")
    parser.add_argument("--output", default="results/ablation")
    parser.add_argument("--data_folder", default=None, help="the corpus (generated if absent)")
    parser.add_argument("--calibration_steps", type=int, default=8)
    # Any other --key=value is passed to every train.py run (e.g. --batch_seconds=60).
    args, args.train_args = parser.parse_known_args(argv)
    unknown = [a for a in args.train_args if not a.startswith("--") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments {unknown}: train.py overrides are --key=value")

    hparams = load_hparams(args.hparams, args.output)
    args.yaml_overrides = yaml_overrides(args.train_args, hparams)
    data_folder = Path(args.data_folder or hparams["data_folder"]).resolve()
    epochs_all = args.epochs or hparams["number_of_epochs"]
    os.makedirs(args.output, exist_ok=True)

    calibration = {name: calibrate(args, name, data_folder) for name in CONFIGS}
    step_ms = {name: c["step_ms"] for name, c in calibration.items()}
    batches = calibration["all three"]["batches_per_epoch"]
    epochs = epochs_for(step_ms, batches, epochs_all)
    print("ablation: ms per step " + ", ".join(f"{n}: {ms:.0f}" for n, ms in step_ms.items()))
    print("ablation: epochs " + ", ".join(f"{n}: {e}" for n, e in epochs.items()), flush=True)

    out, records = Path(args.output), []
    for seed in args.seeds:
        for config in CONFIGS:
            records.append(run(args, config, seed, epochs[config], data_folder))
            # rewritten after every run: an interrupted ablation keeps its table so far
            (out / "ablation.json").write_text(
                json.dumps({"step_ms": step_ms, "epochs": epochs, "runs": records}, indent=2)
                + "\n",
                encoding="utf-8",
            )
            (out / "ablation.md").write_text(table(records), encoding="utf-8")
    print(table(records))


if __name__ == "__main__":
    main()
