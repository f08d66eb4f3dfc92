"""Preference rows as contrastive data: prompt = anchor, chosen = positive, rejected = hard negative."""

from __future__ import annotations

import json

import pytest
import torch

from embedkit.data import collate, read_examples
from embedkit.encoders import load_encoder
from embedkit.losses import build_loss
from embedkit.training.fit import FitSettings, fit
from embedkit.types import Kind

ROWS = [
    {"prompt": "\n\nHuman: where is the cat?\n\nAssistant:", "chosen": " on the mat", "rejected": " a dog runs"},
    {"prompt": "\n\nHuman: what does she play?\n\nAssistant:", "chosen": " the piano", "rejected": " "},
    {"prompt": "\n\nHuman: when does it leave?\n\nAssistant:", "chosen": " at noon", "rejected": " rain falls"},
    {"prompt": "\n\nHuman: what do children build?\n\nAssistant:", "chosen": " a castle", "rejected": " the sun"},
]


@pytest.fixture
def examples(tmp_path):
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return read_examples(tmp_path / "prefs.jsonl")


def test_preference_rows_collate_with_the_rejected_reply_as_hard_negative(examples) -> None:
    assert examples.kind == Kind.PREFERENCE
    batch = collate(examples, examples.kind)
    assert batch.anchors == [row["prompt"] for row in ROWS]
    assert batch.candidates == [row["chosen"] for row in ROWS] + [row["rejected"] for row in ROWS]


@pytest.mark.parametrize("loss", ["infonce", "simcse-sup"])
def test_fit_trains_an_infonce_loss_on_preference_rows(examples, loss, tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    settings = FitSettings(output_dir=tmp_path / "run", batch_size=4, lr=1e-3, max_steps=3, log_steps=1,
                           show_progress=False)
    result = fit(encoder, examples, build_loss(loss), settings)
    losses = [record["loss"] for record in result.history if "loss" in record]
    assert len(losses) == 3 and all(value > 0 for value in losses)
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())
