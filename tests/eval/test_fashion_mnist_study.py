"""The Fashion-MNIST study's machinery on tiny digits: cells sized by the calibrated budget, scored by the
project's eval, written as they finish, skipped on a rerun, gathered into the results JSON and chart."""

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_monitoring import float64_knn_accuracy

from benchmarks import fashion_mnist as study
from benchmarks.fashion_mnist import main as study_main
from trainer.dist import DistContext
from trainer.eval.encoder import fresh_backbone
from trainer.eval.features import split_images
from trainer.registry import load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_study_cells_results_and_rerun(tmp_path, capsys):
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(tmp_path / "shards"), "--size", "16",
                    "--max-samples", "300"], cwd=REPO, check=True, capture_output=True, timeout=120)
    shards = tmp_path / "shards" / "digits"
    tiny = ["data.image_size=16", "model.width=8", "train.global_batch_size=32", "data.workers=0", "eval.knn_k=10"]
    argv = ["--methods", "simclr", "--seeds", "0", "--budget-minutes", "0.05", "--shards", str(shards),
            "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out"), "--fractions", "0.1",
            "--finetune-epochs", "2", "--probe-epochs", "2", "--calibration-steps", "3", *tiny]
    study_main(argv)
    result = next((tmp_path / "out").glob("fashion_mnist_*.json"))
    rows = {r["cell"]: r for r in json.loads(result.read_text())["rows"]}
    assert set(rows) == {"pixels", "random_init_simclr", "simclr_s0_0.05min"}
    cell = rows["simclr_s0_0.05min"]
    assert cell["steps"] == max(1, math.floor(3.0 / cell["calibrated_s_per_step"]))  # 0.05 min = 3 s
    assert all(0.0 <= cell[k] <= 1.0 for k in ("knn", "linear")) and cell["pretrain_wall_s"] > 0
    logged = [json.loads(line) for line in (tmp_path / "work" / "runs" / "simclr_s0_0.05min" / "metrics.jsonl")
              .read_text().splitlines()]
    assert cell["collapse_step"] == next((r["step"] for r in logged if r["collapse"] == 1.0), None)
    (row,) = cell["label_efficiency"]
    per_epoch = row["labeled_samples"] // min(32, row["labeled_samples"])  # FitConfig.epochs: whole batches
    # fine-tune and scratch share one budget in epochs over their labels (early stopping may end sooner)
    assert 0 < row["steps"]["ssl_finetune"] <= 2 * per_epoch and 0 < row["steps"]["scratch"] <= 2 * per_epoch
    assert all(0.0 <= row[k] <= 1.0 for k in ("ssl_linear", "ssl_finetune", "scratch"))

    cfg = load_config(REPO / "configs" / "fashion_mnist_simclr.yaml", [f"data.shards={shards}", *tiny])
    (x, y), (xt, yt) = (split_images(cfg.data, s, DistContext(), 64) for s in ("train", "test"))
    assert rows["pixels"]["knn"] == pytest.approx(float64_knn_accuracy(x, y, xt, yt, 10, cfg.eval.knn_temperature),
                                                  abs=1 / len(yt) + 1e-9)  # one test image: a float-order tie
    net = fresh_backbone(cfg.model, cfg.data.image_size, 0)[0].eval()
    with torch.no_grad():
        f, ft = net(x), net(xt)
    assert rows["random_init_simclr"]["knn"] == pytest.approx(
        float64_knn_accuracy(f, y, ft, yt, 10, cfg.eval.knn_temperature), abs=1 / len(yt) + 1e-9)
    with Image.open(result.with_suffix(".png")) as chart:
        chart.verify()

    calibration = tmp_path / "work" / "runs" / "calibrate_simclr_s0_0.05min" / "metrics.jsonl"
    times = [json.loads(line)["time/step"] for line in calibration.read_text().splitlines()]
    assert cell["calibrated_s_per_step"] == statistics.median(times[1:])  # 3 windows of 1 step, the first dropped
    # a calibration left from before (its checkpoint at the last step) is measured again, not resumed:
    # with its times poisoned, a resumed one would return them
    calibration.write_text("".join(json.dumps({"step": s, "time/step": 1e6}) + "\n" for s in (1, 2, 3)))
    cfg_path = REPO / "configs" / "fashion_mnist_simclr.yaml"
    again = study.seconds_per_step(cfg_path, [f"data.shards={shards}", *tiny], tmp_path / "work" / "runs", 3,
                                   "simclr_s0_0.05min")
    assert again < 1e6 and len(calibration.read_text().splitlines()) == 3

    cells = tmp_path / "work" / "cells"
    stamps = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    capsys.readouterr()
    study_main(argv)
    assert capsys.readouterr().out.count("done before, skipped") == 3
    assert {p.name: p.stat().st_mtime_ns for p in cells.iterdir()} == stamps

    # two gloo ranks under torchrun: a cell of its own, beside the one-process cells, which are skipped
    study_main([*argv[:argv.index("--fractions")], "--fractions", "", "--ranks", "2", "--threads", "2",
                *argv[argv.index("--finetune-epochs"):]])
    two = json.loads((cells / "simclr_s0_0.05min_2ranks.json").read_text())
    log = (tmp_path / "work" / "runs" / "simclr_s0_0.05min_2ranks.log").read_text().splitlines()
    plan = json.loads(next(line for line in log if line.startswith("plan: ")).removeprefix("plan: "))
    assert (two["ranks"], plan["world_size"], plan["per_device_batch_size"], plan["total_steps"]) == (2, 2, 16,
                                                                                                     two["steps"])
    assert 0.0 <= two["knn"] <= 1.0 and two["label_efficiency"] == []
    assert {p.name: p.stat().st_mtime_ns for p in cells.iterdir() if p.name in stamps} == stamps

    # a probe: exactly --steps steps, no calibration run, the overrides recorded; other overrides refused
    no_fractions = [*argv[:argv.index("--fractions")], "--fractions", "", *argv[argv.index("--finetune-epochs"):]]
    study_main(["--steps", "4", *no_fractions])
    probe = json.loads((cells / "simclr_s0_4steps.json").read_text())
    assert (probe["steps"], probe["budget_steps"], probe["budget_minutes"], probe["calibrated_s_per_step"]) == (
        4, 4, None, None)
    assert probe["overrides"] == tiny and not (tmp_path / "work" / "runs" / "calibrate_simclr_s0_4steps").exists()
    logged = [json.loads(line) for line in (tmp_path / "work" / "runs" / "simclr_s0_4steps" / "metrics.jsonl")
              .read_text().splitlines()]
    assert max(r["step"] for r in logged) == 4
    with pytest.raises(SystemExit, match="pixels.json: finished with overrides"):
        study_main(["--steps", "4", *no_fractions, "optim.base_lr=0.5"])
    # a new cell under another recipe is refused too: the work dir's random-init cell was scored at width 8
    finished = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    with pytest.raises(SystemExit, match="finished with overrides"):
        study_main(["--steps", "4", "--seeds", "1", *no_fractions, "model.width=4"])
    assert {p.name: p.stat().st_mtime_ns for p in cells.iterdir()} == finished


def test_a_results_json_seeds_finished_cells_that_join_its_table(tmp_path):
    """--from-results: a committed table's rows become finished cells, each marked with the file it came from,
    so nothing trains and the new table holds them; a cell already in the work dir is kept; a seeded row run
    under other overrides is refused like any finished cell; a file that is not a results table is named."""
    rows = [{"cell": "pixels", "knn": 0.857, "linear": 0.838},
            {"cell": "random_init_simclr", "knn": 0.769, "linear": 0.770, "config": "fashion_mnist_simclr.yaml"},
            {"cell": "simclr_s0_4steps", "method": "simclr", "seed": 0, "budget_minutes": None, "budget_steps": 4,
             "ranks": 1, "steps": 4, "knn": 0.8, "linear": 0.81, "label_efficiency": [], "overrides": []}]
    committed = tmp_path / "fashion_mnist_cpu-1core_2026-12-02.json"
    committed.write_text(json.dumps({"bench": "fashion_mnist", "rows": rows}))
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--steps", "4", "--methods", "simclr", "--fractions", "", "--work-dir", str(work), "--out-dir", str(out),
            "--shards", str(tmp_path / "no-shards-needed")]
    study_main([*argv, "--from-results", str(committed)])
    table = json.loads(next(out.glob("fashion_mnist_*.json")).read_text())["rows"]
    assert table == [{**r, "from_results": committed.name} for r in rows]
    assert not (work / "runs").exists()  # nothing calibrated, trained or scored

    later = tmp_path / "later.json"
    later.write_text(json.dumps({"rows": [{**rows[2], "knn": 0.1}, {**rows[2], "cell": "simclr_s1_4steps", "seed": 1}]}))
    study_main([*argv, "--seeds", "0,1", "--from-results", str(later)])
    table = {r["cell"]: r for r in json.loads(next(out.glob("fashion_mnist_*.json")).read_text())["rows"]}
    assert (table["simclr_s0_4steps"]["knn"], table["simclr_s0_4steps"]["from_results"]) == (0.8, committed.name)
    assert table["simclr_s1_4steps"]["from_results"] == "later.json" and not (work / "runs").exists()

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": [{**rows[2], "overrides": ["optim.base_lr=0.5"]}]}))
    with pytest.raises(SystemExit, match="simclr_s0_4steps.json: finished with overrides"):
        study_main([*argv, "--work-dir", str(tmp_path / "fresh"), "--from-results", str(other)])
    for text, why in (("{not json", "not a results JSON"), ('{"rows": [{"knn": 0.5}]}', "not a results JSON"),
                      ('{"rows": [{"cell": "../pixels"}]}', "cell names that are not file names")):
        other.write_text(text)
        with pytest.raises(SystemExit, match=re.escape(f"--from-results {other}: {why}")):
            study_main([*argv, "--work-dir", str(tmp_path / "bad"), "--from-results", str(other)])
    assert not (tmp_path / "bad" / "cells").exists() or not any((tmp_path / "bad" / "cells").iterdir())


def test_a_collapsed_cell_names_the_first_window_the_loop_flagged(tmp_path):
    """DINO with teacher temperatures of 1000 has uniform targets from the first step (as in
    test_methods_train_e2e): logging every step, the cell's collapse_step is step 1; a SimCLR cell, whose
    contrastive loss keeps the embeddings spread, has none."""
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(tmp_path / "shards"), "--size", "16",
                    "--max-samples", "200"], cwd=REPO, check=True, capture_output=True, timeout=120)
    tiny = ["data.image_size=16", "model.width=8", "train.global_batch_size=32", "data.workers=0", "eval.knn_k=10",
            "train.log_every=1"]
    common = ["--seeds", "0", "--budget-minutes", "0.05", "--shards", str(tmp_path / "shards" / "digits"),
              "--out-dir", str(tmp_path / "out"), "--fractions", "", "--probe-epochs", "1", "--calibration-steps", "3"]
    # two recipes, so two work dirs
    study_main(["--methods", "dino", "--work-dir", str(tmp_path / "dino"), *common, *tiny, "method.out_dim=32",
                "method.teacher_temp=1000", "method.warmup_teacher_temp=1000", "aug.local_crops=0"])
    study_main(["--methods", "simclr", "--work-dir", str(tmp_path / "simclr"), *common, *tiny])
    dino, simclr = (json.loads((tmp_path / m / "cells" / f"{m}_s0_0.05min.json").read_text()) for m in ("dino", "simclr"))
    assert dino["collapse_step"] == 1 and simclr["collapse_step"] is None


def test_over_seeds_gives_mean_and_sample_spread_per_method_and_budget():
    """Against numpy's float64 mean and ddof=1 std; single-seed groups and the reference cells left out."""
    def cell(method, seed, budget, knn, finetune):
        return {"cell": f"{method}_s{seed}_{budget:g}min", "method": method, "seed": seed, "budget_minutes": budget,
                "knn": knn, "linear": knn + 0.01, "steps": 100 + seed,
                "label_efficiency": [{"fraction": 0.01, "ssl_linear": knn - 0.1, "ssl_finetune": finetune,
                                      "scratch": 0.7}]}
    knn, finetune = [0.81, 0.84, 0.86], [0.75, 0.79, 0.78]
    rows = [{"cell": "pixels", "knn": 0.857, "linear": 0.838},
            *(cell("simclr", s, 60.0, k, f) for s, k, f in zip((2, 0, 1), knn, finetune, strict=True)),
            cell("simclr", 0, 20.0, 0.82, 0.79), cell("byol", 0, 60.0, 0.72, 0.73),
            # a 2-rank cell of the same method and budget is another recipe's run: not one of its seeds
            {**cell("simclr", 3, 60.0, 0.99, 0.99), "ranks": 2}]
    (summary,) = study.over_seeds(rows)
    assert (summary["method"], summary["budget_minutes"], summary["seeds"]) == ("simclr", 60.0, [0, 1, 2])
    for key, values in (("knn", knn), ("linear", [k + 0.01 for k in knn]), ("steps", [102, 100, 101])):
        assert summary[key]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert summary[key]["stdev"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    (row,) = summary["label_efficiency"]
    assert row["fraction"] == 0.01 and row["scratch"] == {"mean": pytest.approx(0.7), "stdev": pytest.approx(0.0)}
    assert row["ssl_finetune"]["stdev"] == pytest.approx(np.std(finetune, ddof=1), abs=1e-12)


def test_over_seeds_spreads_label_efficiency_over_the_seeds_that_ran_it():
    """A seed run with --fractions '' joins the kNN and linear spread, not the label-efficiency one."""
    def cell(seed, knn, fractions):
        return {"cell": f"simsiam_s{seed}_650steps", "method": "simsiam", "seed": seed, "budget_minutes": None,
                "budget_steps": 650, "knn": knn, "linear": knn, "steps": 650,
                "label_efficiency": [{"fraction": f, "ssl_linear": knn - f, "ssl_finetune": knn + f, "scratch": 0.78}
                                     for f in fractions]}
    (summary,) = study.over_seeds([cell(0, 0.82, [0.01, 0.1]), cell(1, 0.79, []), cell(2, 0.80, [0.1])])
    assert summary["seeds"] == [0, 1, 2] and summary["knn"]["mean"] == pytest.approx((0.82 + 0.79 + 0.80) / 3)
    (row,) = summary["label_efficiency"]  # 1%: seed 0 alone, no spread
    assert (row["fraction"], row["seeds"]) == (0.1, [0, 2])
    assert row["ssl_finetune"]["stdev"] == pytest.approx(np.std([0.92, 0.90], ddof=1), abs=1e-12)
