"""The DESIGN.md zero-shot preference number, reproduced with the offline all-MiniLM-L6-v2 on hh-rlhf test.

Protocol (found by trying each candidate): the full prompt as the anchor, left to the encoder's own
truncation (max_seq_length 256, which keeps the start of the prompt), chosen and rejected replies as they
are, cosine similarity in fp32, strict ">" (there are no ties). Keeping the end of the prompt instead
(``prompt_truncation="left"``) or only the last human turn gives other numbers; see the benchmark.
"""

from __future__ import annotations

import pytest

from embedkit import load_encoder
from embedkit.eval.preference import PreferenceEvaluator

pytestmark = pytest.mark.slow


def test_zero_shot_similarity_accuracy_reproduces(shared_data) -> None:
    evaluator = PreferenceEvaluator(shared_data / "preference_hh_rlhf" / "test.jsonl", prompt_truncation="right")
    metrics = evaluator(load_encoder(precision="fp32"))
    assert metrics["n"] == 453 and metrics["ties"] == 0
    assert metrics["accuracy"] == pytest.approx(45.25, abs=0.1)  # 205 of 453
