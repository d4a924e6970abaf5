"""scripts/bench_vs_nnunet.py: the wall-time schedule, and its --smoke run end to end on the CPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_vs_nnunet.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_vs_nnunet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_schedule_fills_the_budget_after_startup_and_final_validation():
    cal = bench.Calibration(startup_s=10.0, iters_per_s=45.0, val_s=1.0, final_s_per_case=0.5, final_fixed_s=2.0)
    epochs, iters = bench.choose_schedule(cal, 250.0, 250, 42)
    assert iters >= 250  # whole epochs of at least nnU-Net's length
    target = bench.BUDGET_TARGET * 250.0
    used = 10.0 + 2.0 + 21.0 + epochs * (iters / 45.0 + 1.0)
    assert used <= target < used + epochs / 45.0  # short of the target by less than a step per epoch
    assert epochs * (250 / 45.0 + 1.0) + 33.0 <= target < (epochs + 1) * (250 / 45.0 + 1.0) + 33.0


def test_schedule_shortens_the_only_epoch_when_none_fits_and_honours_the_cap():
    slow = bench.Calibration(startup_s=100.0, iters_per_s=1.0, val_s=10.0, final_s_per_case=1.0)
    assert bench.choose_schedule(slow, 250.0, 250, 40) == (1, int(bench.BUDGET_TARGET * 250.0 - 100 - 40 - 10))
    fast = bench.Calibration(startup_s=1.0, iters_per_s=100.0, val_s=0.1, final_s_per_case=0.01)
    epochs, iters = bench.choose_schedule(fast, 250.0, 250, 2, max_iters=2)
    assert epochs * iters == 2


def test_network_specs_name_the_ssm_ablation_folder():
    assert bench.parse_network("umamba_bot:none") == ("umamba_bot", "none")
    assert bench.tag_of("umamba_bot:none") == "umamba_bot__ssm-none"
    assert bench.tag_of("resenc_unet") == "resenc_unet"


def test_table_only_puts_the_nnunet_anchor_rows_first(tmp_path, capsys):
    row = {"name": "resenc_unet", "wall_s": 240.0, "dice": {"Anterior": 0.8, "Posterior": 0.7}, "mean_dice": 0.75}
    (tmp_path / "hippocampus__resenc_unet.json").write_text(json.dumps(row))
    bench.main([str(tmp_path), "--table-only"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| nnU-Net v2.8.1 (anchor, measured) | 250 |")
    assert "0.883" in rows[1] and rows[2].startswith("| nnU-Net (published")
    assert rows[3].startswith("| resenc_unet | 240 |") and "0.750" in rows[3]


def test_training_costs_take_epoch_two_as_the_steady_one():
    # called at 100; epoch 1 starts at 110 and is slow (it builds the validation batches);
    # epoch 2 (10 iterations at 5 it/s = 2 s of steps) takes 3 s; epoch 3 and the wait for
    # its writes end at 120.5, 0.5 s more than a steady epoch.
    epochs = [{"started_at": 110.0, "iters_per_s": 4.0}, {"started_at": 114.0, "iters_per_s": 5.0},
              {"started_at": 117.0, "iters_per_s": 5.0}]
    startup_s, rate, overhead_s = bench.training_costs(100.0, 120.5, epochs, iters=10)
    assert rate == 5.0 and overhead_s == pytest.approx(1.0)
    assert startup_s == pytest.approx(114.0 - 100.0 - 3.0 + 0.5)
    with pytest.raises(ValueError, match="3 epochs"):
        bench.training_costs(100.0, 120.5, epochs[:2], iters=10)


@pytest.mark.slow
def test_smoke_run_trains_predicts_scores_and_times_every_step(tmp_path, capsys):
    bench.main([str(tmp_path), "--smoke", "--networks", "umamba_bot:none"])
    result = json.loads((tmp_path / "hippocampus__umamba_bot__ssm-none.json").read_text())
    assert result["schedule"] == "1x2"  # the smoke cap, whatever the budget allowed
    log = json.loads((tmp_path / "work" / "results" / "umamba_bot__ssm-none" / "3d_fullres" / "fold_0"
                      / "training_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1]  # the warm-up's folder was removed first
    assert log["metadata"]["network_kwargs"]["ssm"] == "none"
    assert set(result["dice"]) == {"core", "rim"}
    assert all(0.0 <= d <= 1.0 for d in result["dice"].values())
    assert result["val_timing"]["tta"]["cases"] == result["val_timing"]["no_tta"]["cases"] == 2
    assert result["val_s_per_case"] > 0 and result["val_s_per_case_tta"] > 0
    assert result["iters_per_s"] > 0 and result["parameters_m"] > 0 and result["peak_alloc_gib"] is None
    cal = result["calibration"]
    assert cal["iters_per_s"] > 0 and cal["startup_s"] >= 0 and cal["final_s_per_case"] > 0
    assert cal["val_s"] > 0 and cal["final_fixed_s"] >= 0
    brats = json.loads((tmp_path / "brats__umamba_bot__ssm-none.json").read_text())
    assert brats["timing"]["tta_True"]["cases"] == 3 and brats["brats_s_per_case_tta"] > 0
    assert brats["timing"]["tta_False"]["compile"] is False and brats["timing"]["tta_False"]["first_case_s"] > 0
    # nnU-Net's span timed case by case, the folder's apart: both from the same 3 cases
    assert len(brats["timing"]["tta_False"]["array_to_mask_s"]) == 3
    assert brats["brats_file_s_per_case"] > 0 and brats["brats_file_s_per_case_tta"] > 0
    assert set(brats["timing"]["tta_True"]["median_stage_s_after_first"]) == {
        "read", "preprocess", "predict", "write"}
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert table[1].startswith("| nnU-Net v2.8.1 (anchor, measured)")
    assert table[3].startswith("| umamba_bot__ssm-none | ")


@pytest.mark.slow
def test_predict_compile_times_brats_through_torch_compile_under_its_own_name(tmp_path):
    bench.main([str(tmp_path), "--smoke", "--networks", "resenc_unet", "--predict-compile"])
    brats = json.loads((tmp_path / "brats__resenc_unet__predict-compile.json").read_text())
    assert all(brats["timing"][tta]["compile"] is True for tta in ("tta_False", "tta_True"))
    assert brats["brats_s_per_case"] > 0 and not (tmp_path / "brats__resenc_unet.json").exists()


def test_prepare_only_plans_and_preprocesses_and_trains_nothing(tmp_path, capsys):
    bench.main([str(tmp_path), "--smoke", "--prepare-only"])
    assert (tmp_path / "work" / "plans.json").is_file()
    assert any((tmp_path / "work" / "preprocessed").iterdir())
    assert not (tmp_path / "work" / "results").exists() and not list(tmp_path.glob("*__*.json"))
    assert "| network |" not in capsys.readouterr().out


def _load_table():
    spec = importlib.util.spec_from_file_location("vs_nnunet_table", SCRIPT.parent / "vs_nnunet_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NNUNET_LOG = """setup 5 s
train rc=0 wall 237.1 s
2026-11-30 11:46:17.334645: Epoch time: 5.46 s
2026-11-30 11:46:24.280246: Epoch time: 5.40 s
2026-11-30 11:46:30.280246: Epoch time: 5.00 s
val fold0 mean 0.8822 {'1': 0.8909, '2': 0.8735}
predict notta rc=0 52 cases 28.4 s
predict tta rc=0 52 cases 27.3 s
"""


def test_nnunet_rerun_row_reads_run_sh_output_and_one_gpu_of_the_memory_log():
    vs = _load_table()
    row = vs.nnunet_rerun_row(NNUNET_LOG, "0\n100\n1625\n11765\n900\n200\n", cases=42, gpu=0, gpus=2)
    assert row["wall_s"] == 237.1 and row["iters_per_s"] == pytest.approx(250 / 5.40)
    assert row["dice"] == {"Anterior": 0.8909, "Posterior": 0.8735} and row["mean_dice"] == 0.8822
    assert row["val_s_per_case"] == pytest.approx(28.4 / 42) and row["val_s_per_case_tta"] == pytest.approx(27.3 / 42)
    assert row["peak_reserved_gib"] == pytest.approx(1625 / 1024)  # GPU 1's 11765 MiB is not ours
    with pytest.raises(ValueError, match="train rc=0"):  # a failed run: no val line either
        vs.nnunet_rerun_row(NNUNET_LOG.replace("train rc=0", "train rc=124").split("val fold0")[0], "1\n", cases=42)
    with pytest.raises(ValueError, match="Epoch time"):
        vs.nnunet_rerun_row(NNUNET_LOG.replace("Epoch time", "epoch"), "1\n", cases=42)
    with pytest.raises(ValueError, match="gpu 2"):
        vs.nnunet_rerun_row(NNUNET_LOG, "1\n2\n", cases=42, gpu=2, gpus=2)
    with pytest.raises(ValueError, match="empty"):
        vs.nnunet_rerun_row(NNUNET_LOG, "", cases=42)


def test_table_shows_nnunet_reruns_first_and_brats_timings_apart(tmp_path):
    vs = _load_table()
    (tmp_path / "nnunet__rerun.json").write_text(json.dumps({"name": "nnU-Net re-run", "mean_dice": 0.88}))
    (tmp_path / "hippocampus__umamba_bot.json").write_text(json.dumps({"name": "umamba_bot", "mean_dice": 0.87}))
    stages = {"read": 0.2, "predict": 0.5, "write": 0.3}
    timing = {"tta_False": {"median_stage_s_after_first": stages, "peak_alloc_gib": 5.0},
              "tta_True": {"median_stage_s_after_first": stages, "peak_alloc_gib": 5.5}}
    (tmp_path / "brats__umamba_bot.json").write_text(json.dumps({
        "name": "umamba_bot", "patch": [96, 160, 160], "timing": timing, "brats_s_per_case": 0.5,
        "brats_s_per_case_tta": 2.0, "brats_file_s_per_case": 1.0, "brats_file_s_per_case_tta": 2.5}))
    rows = [line for line in vs.table(tmp_path).splitlines() if line.startswith("| ")]
    assert rows[3].startswith("| nnU-Net re-run |") and rows[4].startswith("| umamba_bot |")
    assert rows[-2].startswith("| nnU-Net v2.8.1 (anchor, H100) | 96x160x160 | 0.86 | 2.28 |")
    assert rows[-1] == "| umamba_bot | 96x160x160 | 0.50 | 2.00 | 1.00 | 2.50 | 0.20 | 0.30 | 5.50 |"


def test_brats_rows_written_before_the_stage_timings_show_as_whole_case_figures(tmp_path):
    vs = _load_table()
    timing = {"tta_False": {"peak_alloc_gib": 5.0}, "tta_True": {"peak_alloc_gib": 5.5}}
    (tmp_path / "brats__umamba_bot.json").write_text(json.dumps({
        "name": "umamba_bot", "patch": [96, 160, 160], "timing": timing, "brats_s_per_case": 1.25,
        "brats_s_per_case_tta": 2.71}))
    rows = [line for line in vs.table(tmp_path).splitlines() if line.startswith("| umamba_bot")]
    assert rows == ["| umamba_bot | 96x160x160 | - | - | 1.25 | 2.71 | - | - | 5.50 |"]


INFER_TIME_LOG = """parameters 30789273 patch [96, 160, 160]
tta=False brats_2013_pat0001_1 shape (2, 155, 240, 240) whole 5.59 s, sliding window only 0.21 s, seg (155, 240, 240)
TTA=False: whole case median 1.13 s, sliding window median 0.21 s (first case = warm-up, excluded)
TTA=True: whole case median 2.34 s, sliding window median 1.52 s (first case = warm-up, excluded)
peak GPU memory GiB 1.54
"""


def test_nnunet_brats_row_reads_infer_time_output_and_heads_the_brats_table(tmp_path):
    vs = _load_table()
    row = vs.nnunet_brats_row(INFER_TIME_LOG, "nnU-Net re-run")
    assert (row["patch"], row["brats_s_per_case"], row["brats_s_per_case_tta"]) == ("96x160x160", 1.13, 2.34)
    assert (row["sliding_window_s"], row["sliding_window_s_tta"], row["peak_alloc_gib"]) == (0.21, 1.52, 1.54)
    with pytest.raises(ValueError, match="TTA=True"):
        vs.nnunet_brats_row(INFER_TIME_LOG.split("TTA=True")[0])
    (tmp_path / "nnunet_brats__rerun.json").write_text(json.dumps(row))
    timing = {"tta_False": {"median_stage_s_after_first": {}, "peak_alloc_gib": 5.0},
              "tta_True": {"median_stage_s_after_first": {}, "peak_alloc_gib": 5.5}}
    (tmp_path / "brats__a_net.json").write_text(json.dumps({
        "name": "a_net", "patch": [96, 160, 160], "timing": timing, "brats_s_per_case": 0.4,
        "brats_s_per_case_tta": 1.2, "brats_file_s_per_case": 0.8, "brats_file_s_per_case_tta": 1.6}))
    rows = [line for line in vs.table(tmp_path).splitlines() if line.startswith("| ")]
    assert rows[-2] == "| nnU-Net re-run | 96x160x160 | 1.13 | 2.34 | - | - | - | - | 1.54 |"
    assert rows[-1].startswith("| a_net | 96x160x160 | 0.40 | 1.20 |")
