"""recipes/pretrain/ablation.py: equal-wall-time epochs, overrides and the mean/std table."""

import importlib.util
import math
import statistics
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "recipes" / "pretrain" / "ablation.py"


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("pretrain_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configs_are_the_four_of_table_5(ablation):
    """CLAP alone, with each other loss, and all three at the recipe's weights (1 / 1 / 0.5)."""
    assert ablation.CONFIGS == {
        "CLAP only": {"clap": 1.0, "ssl": 0.0, "cap": 0.0},
        "CLAP + SSL": {"clap": 1.0, "ssl": 1.0, "cap": 0.0},
        "CLAP + captioning": {"clap": 1.0, "ssl": 0.0, "cap": 0.5},
        "all three": {"clap": 1.0, "ssl": 1.0, "cap": 0.5},
    }
    assert ablation.slug("CLAP + captioning") == "clap_captioning"
    assert ablation.weights_override({"clap": 1.0, "ssl": 0.0}) == "{clap: 1.0, ssl: 0.0}"


def test_epochs_give_equal_wall_time(ablation):
    """A configuration half as costly per step gets twice the epochs; never fewer than one."""
    step_ms = {"CLAP only": 500.0, "CLAP + SSL": 1000.0, "all three": 1000.0, "slow": 9000.0}
    epochs = ablation.epochs_for(step_ms, batches=140, epochs_all=3)
    assert epochs == {"CLAP only": 6, "CLAP + SSL": 3, "all three": 3, "slow": 1}
    # nearest, not floor: 3 * 1000 / 700 = 4.29 epochs
    assert ablation.epochs_for({"a": 700.0, "all three": 1000.0}, 140, 3)["a"] == 4


def test_table_mean_and_std_over_seeds(ablation):
    """One row per configuration, mean ± sample std in percent, seeds and epochs listed."""

    def record(config, seed, t2a, epochs=2):
        return {
            "config": config,
            "seed": seed,
            "epochs": epochs,
            "wall_s": 600.0,
            "t2a_R@1": t2a,
            "a2t_R@1": 0.1,
            "zeroshot_accuracy": 0.5,
            "frame_probe_accuracy": 0.9,
        }

    records = [record("CLAP only", s, v, 4) for s, v in ((1, 0.10), (2, 0.12), (3, 0.14))]
    records.append(record("all three", 1, 0.2))
    text = ablation.table(records)
    lines = text.strip().splitlines()
    assert len(lines) == 4  # header, rule, two configurations
    std = 100 * statistics.stdev([0.10, 0.12, 0.14])
    assert lines[2].startswith("| CLAP only | 1 2 3 | 4 | 10.0 min | 12.0 ± " + f"{std:.1f}")
    assert lines[3].startswith("| all three | 1 | 2 | 10.0 min | 20.0 ± 0.0 | 10.0 ± 0.0")
    assert math.isclose(std, 2.0)


def test_options_and_train_overrides_are_told_apart(ablation, monkeypatch):
    """Options after the yaml are the ablation's; other --key=value go to train.py."""
    seen = {}

    def stop(args, config, data_folder):
        seen.update(vars(args))
        raise SystemExit(0)

    monkeypatch.setattr(ablation, "calibrate", stop)
    monkeypatch.setattr(ablation, "load_hparams", lambda path, output: {"data_folder": "d"})
    with pytest.raises(SystemExit):
        ablation.main(["x.yaml", "--seeds", "4", "5", "--epochs", "1", "--batch_seconds=60"])
    assert seen["seeds"] == [4, 5] and seen["epochs"] == 1
    assert seen["train_args"] == ["--batch_seconds=60"]
    with pytest.raises(SystemExit):
        ablation.main(["x.yaml", "--nonsense", "1"])


def test_yaml_overrides_reach_the_calibration_run_options_do_not(ablation):
    """--ssl_view=dual changes what a step costs, so the calibration times it; --device is no
    yaml key."""
    hparams = {"ssl_view": "shared", "batch_seconds": 60}
    args = ["--ssl_view=dual", "--device=cpu", "--batch_seconds=30", "--note=a=b"]
    assert ablation.yaml_overrides(args, hparams) == ["ssl_view: dual", "batch_seconds: 30"]


def test_a_kept_run_with_other_epochs_is_refused(ablation, tmp_path):
    """A run folder kept from an ablation that gave other epochs is not reused silently."""
    folder = tmp_path / "clap_only" / "1"
    folder.mkdir(parents=True)
    (folder / "test_results.json").write_text('{"t2a_R@1": 0.1}')
    (folder / "ablation_run.json").write_text('{"wall_s": 60.0, "epochs": 1}')
    args = type("Args", (), {"output": str(tmp_path), "hparams": "x.yaml", "train_args": []})
    record = ablation.run(args, "CLAP only", 1, 1, tmp_path)
    assert record["epochs"] == 1 and record["t2a_R@1"] == 0.1
    with pytest.raises(SystemExit, match="ran 1 epochs, this ablation gives CLAP only 2"):
        ablation.run(args, "CLAP only", 1, 2, tmp_path)
