"""The reference numbers of DESIGN.md, reproduced with the offline all-MiniLM-L6-v2 on the shared data."""

from __future__ import annotations

import pytest

from embedkit import evaluate_sts, load_encoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_fp32():
    return load_encoder(precision="fp32")


def test_stsb_test_spearman_reproduces(minilm_fp32, shared_data) -> None:
    result = evaluate_sts(minilm_fp32, shared_data / "stsb" / "test.jsonl")
    assert result["spearman"] == pytest.approx(82.03, abs=0.05)


def test_bf16_matches_fp32_quality(shared_data) -> None:
    result = evaluate_sts(load_encoder(precision="bf16"), shared_data / "stsb" / "test.jsonl")
    assert result["spearman"] == pytest.approx(82.03, abs=0.1)


def test_folder_of_sts_files_senteval_style(minilm_fp32, shared_data) -> None:
    result = evaluate_sts(minilm_fp32, shared_data / "sts")
    assert set(result) == {"sts12/spearman", "sts13/spearman", "spearman"}
    assert result["sts12/spearman"] == pytest.approx(72.37, abs=0.05)
    assert result["sts13/spearman"] == pytest.approx(80.60, abs=0.05)
    assert result["spearman"] == pytest.approx((result["sts12/spearman"] + result["sts13/spearman"]) / 2)
