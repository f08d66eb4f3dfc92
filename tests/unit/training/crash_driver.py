"""Kill a training run at every point of its checkpoint saves, and resume each one; run by test_fit_crash.py.

    python crash_driver.py MODEL WORKDIR

A point is a change to the file system (a folder made, a file flushed, a rename, a delete) made while
``fit()`` saves a checkpoint. For point k = 1, 2, ... a forked process trains into ``WORKDIR/crash-<k>`` and calls
``os._exit`` just before the k-th such change, as a killed process would stop; another forked process then
resumes that run to the end. The first k that trains to the end without reaching its point ends the loop.
``WORKDIR/straight`` is the same run, never interrupted. Forking from one process that has imported torch but
not yet run it keeps the many runs cheap; every run computes on one thread, so all of them round alike.

Writes ``WORKDIR/summary.json``: ``{"points": [{"save_step": s, "operation": name, "start_step": resumed at}]}``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: conftest's training sentences

import torch
from conftest import sentence_examples

from embedkit.encoders import load_encoder
from embedkit.losses import build_loss
from embedkit.training.fit import FitResult, FitSettings, fit

fit_module = importlib.import_module("embedkit.training.fit")  # the package's attribute "fit" is the function

KILLED = 86  # the exit status of a run stopped at its point
CHANGES = ("mkdir", "fsync", "replace", "rename", "unlink", "rmdir")  # what a save can change on disk


def train(model: str, output_dir: Path) -> FitResult:
    encoder = load_encoder(model, precision="fp32", mlp_head=True)
    # two epochs of two steps: a first save (step 2) and a last one (step 4) with a checkpoint to replace
    settings = FitSettings(output_dir=output_dir, batch_size=4, lr=1e-3, max_steps=4, save_steps=2, log_steps=1,
                           show_progress=False, warmup_ratio=0.2, seed=7)
    return fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings)


def in_child(job: Callable[[], object]) -> int:
    """Run ``job`` in a forked process; its exit status (0 when it returned)."""
    pid = os.fork()
    if pid == 0:
        try:
            job()
        except Exception:  # noqa: BLE001  (any failure: the child's exit status says it)
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def die_at(point: int, record: Path) -> None:
    """Make this process exit just before the ``point``-th file-system change made inside a checkpoint save,
    after writing the save's step and the change to ``record``."""
    seen = 0
    saving: list[int] = []  # the step of the save in progress

    def counted(name: str, change: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            nonlocal seen
            if saving:
                seen += 1
                if seen == point:
                    record.write_text(json.dumps({"save_step": saving[0], "operation": name}))
                    os._exit(KILLED)
            return change(*args, **kwargs)

        return wrapper

    for name in CHANGES:
        setattr(os, name, counted(name, getattr(os, name)))
    publish = fit_module._publish_checkpoint

    def watched(output_dir: Path, step: int, write: Callable[[Path], None]) -> None:
        saving.append(step)
        publish(output_dir, step, write)
        saving.clear()

    fit_module._publish_checkpoint = watched


def killed_run(model: str, folder: Path, point: int, record: Path) -> None:
    die_at(point, record)
    train(model, folder)


def resumed_run(model: str, folder: Path, record: Path) -> None:
    """Resume the killed run in ``folder`` to its end; add the step it resumed at to ``record``."""
    result = train(model, folder)
    record.write_text(json.dumps({**json.loads(record.read_text()), "start_step": result.start_step}))


def main(model: str, workdir: Path) -> None:
    torch.set_num_threads(1)
    if in_child(lambda: train(model, workdir / "straight")) != 0:
        raise SystemExit("the uninterrupted run failed")
    points = []
    for point in range(1, 1000):
        folder, record = workdir / f"crash-{point}", workdir / f"crash-{point}.json"
        status = in_child(partial(killed_run, model, folder, point, record))
        if status == 0:
            break  # the run never reached this point: every point has been tried
        if status != KILLED:
            raise SystemExit(f"the run to be killed at point {point} failed with status {status}")
        if in_child(partial(resumed_run, model, folder, record)) != 0:
            raise SystemExit(f"resuming the run killed at point {point} failed")
        points.append(json.loads(record.read_text()))
    (workdir / "summary.json").write_text(json.dumps({"points": points}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
