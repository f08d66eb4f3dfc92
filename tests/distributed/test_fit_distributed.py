"""fit() under 2 gloo processes trains the same weights as one process on batches twice as large, and an
interrupted distributed run resumes to the same weights."""

from __future__ import annotations

import json

import torch
from ranks import run_on_ranks
from safetensors.torch import load_file

from embedkit.data import Examples
from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.losses import build_loss
from embedkit.training.fit import FitSettings, fit
from embedkit.types import Example, Kind

SENTENCES = [f"sentence {i} about the {w}" for i, w in enumerate(["cat", "dog", "sun", "rain", "train", "ship"] * 3)]


def examples() -> Examples:
    return Examples([Example(anchor=s, positive=s) for s in SENTENCES], Kind.SENTENCES)


def settings(output_dir, batch_size: int) -> FitSettings:
    return FitSettings(output_dir=output_dir, batch_size=batch_size, lr=1e-3, epochs=2, save_steps=2, log_steps=1,
                       show_progress=False, seed=3)


class Interrupt(Exception):
    pass


def interrupt_at_step_3(step: int, metrics: dict) -> None:
    if step == 3:  # after the checkpoint of step 2, mid-way through the second epoch
        raise Interrupt


def worker(rank: int, world: int, model: str, output_dir: str) -> None:
    fit(load_encoder(model, precision="fp32"), examples(), build_loss("simcse-unsup"), settings(output_dir, 4))
    # the same run, interrupted on every rank and restarted: it resumes from its checkpoint
    resumed = settings(f"{output_dir}-resumed", 4)
    try:
        fit(load_encoder(model, precision="fp32"), examples(), build_loss("simcse-unsup"), resumed,
            callbacks=[interrupt_at_step_3])
    except Interrupt:
        pass
    ran: list[int] = []
    fit(load_encoder(model, precision="fp32"), examples(), build_loss("simcse-unsup"), resumed,
        callbacks=[lambda step, metrics: ran.append(step)])
    assert ran == [3, 4]  # restarted after the checkpoint of step 2, not from the start


def test_two_processes_equal_one_process_and_resume_exactly(tmp_path) -> None:
    # No dropout: the two runs may then differ only by float round-off, not by random masks.
    model = str(build_tiny_model(tmp_path / "model", SENTENCES, seed=5, dropout=0.0))
    run_on_ranks(worker, [2], tmp_path / "ranks", model, str(tmp_path / "dist"))
    single = load_encoder(model, precision="fp32")
    fit(single, examples(), build_loss("simcse-unsup"), settings(tmp_path / "single", 8))

    distributed = load_file(str(tmp_path / "dist" / "checkpoint" / "encoder.safetensors"))
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(distributed[name], tensor, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    steps = [json.loads(line)["step"] for line in (tmp_path / "dist" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # 18 rows / (4 x 2 processes) = 2 steps an epoch, 2 epochs, logged once

    # the interrupted and resumed distributed run ends with the very same weights and log
    resumed = load_file(str(tmp_path / "dist-resumed" / "checkpoint" / "encoder.safetensors"))
    assert all(torch.equal(resumed[name], tensor) for name, tensor in distributed.items())
    lines = (tmp_path / "dist-resumed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == steps
