"""CUDA paths: encoding and a training step with autocast. Skipped without a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedkit.data import Examples
from embedkit.encoders import load_encoder
from embedkit.losses import build_loss
from embedkit.training.fit import FitSettings, fit
from embedkit.types import Example, Kind

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TEXTS = ["the cat sat on the mat", "a dog runs in the park", "the sun rises in the east", "the train leaves"]


def test_cuda_encode_matches_cpu(tiny_model_path) -> None:
    cpu = load_encoder(tiny_model_path, device="cpu", precision="fp32").encode(TEXTS, normalize=True)
    cuda = load_encoder(tiny_model_path, device="cuda", precision="auto").encode(TEXTS, normalize=True)
    assert np.abs((cpu * cuda).sum(1) - 1).max() < 1e-2


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_step(tiny_model_path, tmp_path, precision: str) -> None:
    encoder = load_encoder(tiny_model_path, device="cuda", precision=precision)
    examples = Examples([Example(anchor=t, positive=t) for t in TEXTS], Kind.SENTENCES)
    result = fit(encoder, examples, build_loss("simcse-unsup"),
                 FitSettings(output_dir=tmp_path, batch_size=4, max_steps=2, show_progress=False))
    assert result.steps == 2 and all(np.isfinite(r["loss"]) for r in result.history if "loss" in r)
