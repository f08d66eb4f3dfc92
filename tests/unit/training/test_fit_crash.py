"""Checkpoints survive a crash at any moment: a run killed anywhere in a save resumes from its newest complete
checkpoint and ends as an uninterrupted one; checkpoints of runs made before complete.json still resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, sentence_examples
from safetensors.torch import load_file

from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.losses import build_loss
from embedkit.training.fit import FitSettings, _truncate_log, fit

DRIVER = Path(__file__).with_name("crash_driver.py")


def log_records(run: Path) -> list[dict]:
    """The run's log without timings, which differ between any two runs."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k != "elapsed_s"} for record in records]


def assert_same_weights(run: Path, expected: Path) -> None:
    actual, wanted = (load_file(str(folder / "checkpoint" / "encoder.safetensors")) for folder in (run, expected))
    assert actual.keys() == wanted.keys()
    for name in wanted:
        torch.testing.assert_close(actual[name], wanted[name], rtol=0, atol=0, msg=f"{run.name}: {name}")


@pytest.mark.slow
def test_a_run_killed_at_any_point_of_a_checkpoint_save_resumes_to_the_same_end(tiny_model_path, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(DRIVER), str(tiny_model_path), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    points = json.loads((tmp_path / "summary.json").read_text())["points"]

    straight = tmp_path / "straight"
    # both saves (step 2 and the last, step 4) were killed before and after the new checkpoint took over
    resumed_at = {(p["save_step"], p["start_step"]) for p in points}
    assert resumed_at == {(2, 0), (2, 2), (4, 2), (4, 4)}
    assert {p["operation"] for p in points} >= {"mkdir", "fsync", "replace", "unlink", "rmdir"}
    for point, _ in enumerate(points, start=1):
        run = tmp_path / f"crash-{point}"
        assert_same_weights(run, straight)
        assert log_records(run) == log_records(straight), run.name
        # nothing left of the interrupted save: the same folders as the uninterrupted run
        assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in straight.iterdir()), run.name


def settings(output_dir: Path, **changes) -> FitSettings:
    return FitSettings(**{"output_dir": output_dir, "batch_size": 4, "lr": 1e-3, "epochs": 3, "save_steps": 2,
                          "log_steps": 1, "show_progress": False, "warmup_ratio": 0.2, "seed": 7, **changes})


class Crash(Exception):
    pass


def crash_at(crash_step: int):
    def callback(step: int, metrics: dict) -> None:
        if step == crash_step:
            raise Crash

    return callback


def train(model: Path, output_dir: Path, crash_step: int | None = None, **changes):
    encoder = load_encoder(model, precision="fp32")
    callbacks = [crash_at(crash_step)] if crash_step is not None else []
    result = fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(output_dir, **changes),
                 callbacks=callbacks)
    return result


@pytest.mark.parametrize("layout", ["checkpoint", ".checkpoint.old-1234"])
def test_a_run_made_before_complete_markers_resumes(tiny_model_path, tmp_path, layout) -> None:
    train(tiny_model_path, tmp_path / "straight")
    run = tmp_path / "old"
    with pytest.raises(Crash):
        train(tiny_model_path, run, crash_step=5)  # after the checkpoint of step 4
    # as the code before complete.json left it: no marker, and (when killed mid-swap) the folder stepped aside
    (run / "checkpoint" / "complete.json").unlink()
    (run / "checkpoint").rename(run / layout)

    result = train(tiny_model_path, run)
    assert result.start_step == 4
    assert_same_weights(run, tmp_path / "straight")
    assert log_records(run) == log_records(tmp_path / "straight")
    assert not (run / ".checkpoint.old-1234").exists()  # the next save cleared the old layout away


def test_checkpoint_folders_without_a_complete_one_are_an_error_and_nothing_is_deleted(tiny_model_path,
                                                                                       tmp_path) -> None:
    with pytest.raises(Crash):
        train(tiny_model_path, tmp_path, crash_step=3)
    (tmp_path / "checkpoint" / "complete.json").unlink()
    (tmp_path / "checkpoint" / "trainer_state.pt").unlink()
    log = (tmp_path / "log.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"holds no complete checkpoint to resume from \(checkpoint: no "):
        train(tiny_model_path, tmp_path)
    assert (tmp_path / "log.jsonl").read_text() == log and (tmp_path / "checkpoint").is_dir()


def test_a_fresh_start_never_resumes_from_the_run_it_replaced(tiny_model_path, tmp_path) -> None:
    train(tiny_model_path, tmp_path)  # a finished run: its checkpoint is at step 6
    with pytest.raises(Crash):
        train(tiny_model_path, tmp_path, crash_step=1, resume=False)  # killed before its first checkpoint
    assert not (tmp_path / "checkpoint").exists()
    assert train(tiny_model_path, tmp_path).start_step == 0


def test_a_log_line_cut_short_by_a_crash_is_dropped(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    _truncate_log(log, after_step=2)
    assert log.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
