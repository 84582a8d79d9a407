"""experiments/search.py: the choice of settings from finished trials and the search table,
on trial records written here (no training)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import search  # noqa: E402


def _record(stage, holdout, overrides):
    return dict(task="stsb", stage=stage, trial=search._trial_name(stage, overrides), overrides=overrides,
                holdout=holdout, holdout_exits={"1": holdout - 0.1, "6": holdout}, metric="combined", seconds=60.0,
                teacher="runs/stsb/teacher/best" if stage == "exit" else None)


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "RESULTS", str(tmp_path))
    records = [_record("teacher", 0.80, {"finetune.learning_rate": 5e-5, "finetune.epochs": 5.0}),
               _record("teacher", 0.78, {"finetune.learning_rate": 1e-4, "finetune.epochs": 5.0}),
               _record("ta", 0.70, {"ta.learning_rate": 2e-4, "ta.epochs": 2.0}),
               _record("exit", 0.60, {"training.exit_lr_multiplier": 1.0, "ta.epochs": 2.0, "train_examples": 2000}),
               _record("exit", 0.66, {"training.exit_lr_multiplier": 10.0, "ta.epochs": 2.0, "train_examples": 2000})]
    (tmp_path / "stsb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_best_settings_take_each_stages_best_and_drop_search_only_keys(results):
    chosen = search.best_settings("stsb")
    assert chosen["finetune.learning_rate"] == 5e-5 and chosen["ta.learning_rate"] == 2e-4
    assert chosen["training.exit_lr_multiplier"] == 10.0
    assert not set(search.SEARCH_ONLY) & set(chosen)          # trial-only settings never reach a run
    assert chosen["slenderize.learning_rate"] == 2.5e-5       # the paper's ratios to the fine-tuning rate


def test_table_marks_the_chosen_trials_and_says_where_the_exit_trials_teacher_comes_from(results):
    text = search.table()
    assert "## stsb: exit" in text and "held-out part included" in text
    chosen = [line for line in text.splitlines() if "(chosen)" in line]
    assert len(chosen) == 3 and any("training.exit_lr_multiplier=10.0" in line for line in chosen)


def test_exit_grid_covers_every_task_and_starts_at_one():
    for task, grid in search.EXIT_GRID.items():
        assert grid[0]["training.exit_lr_multiplier"] == 1.0 and all(g["train_examples"] > 0 for g in grid), task


@pytest.mark.parametrize("task", sorted(f[:-len(".jsonl")] for f in os.listdir(search.RESULTS) if f.endswith(".jsonl")))
def test_each_searched_tasks_preset_holds_what_its_search_chose(task):
    # The committed search results (results/search/<task>.jsonl) and the preset of the same
    # task must agree: `npcosteff run --preset TASK` is the recipe the search chose.
    from npcosteff.presets import get_preset

    chosen = search.best_settings(task)
    assert chosen, f"results/search/{task}.jsonl holds no finished trial"
    preset = get_preset(task)
    differ = {k: (preset.get(k), v) for k, v in chosen.items() if preset.get(k) != pytest.approx(v)}
    assert not differ, f"preset {task!r} differs from its search (preset, search): {differ}"
