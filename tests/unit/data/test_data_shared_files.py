"""The real shared datasets read with their inferred kinds and expected row counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedkit.data import Kind, collate, infer_kind, read_examples, read_rows


@pytest.mark.parametrize(
    ("relative", "kind", "count"),
    [
        ("stsb/test.jsonl", Kind.SCORED, 1379),
        ("nli/snli_dev_test.triplets.jsonl", Kind.TRIPLETS, 5883),
        ("preference_hh_rlhf/test.jsonl", Kind.PREFERENCE, 453),
        ("wiki1m_subset/wiki1m_for_simcse.sample10k.txt", Kind.SENTENCES, 10000),
    ],
)
def test_shared_file_reads_completely(shared_data: Path, relative: str, kind: Kind, count: int) -> None:
    path = shared_data / relative
    _, first = next(read_rows(path))
    assert infer_kind(first) is kind
    examples = read_examples(path)
    assert len(examples) == count
    assert examples[-1].source is not None
    assert examples[-1].source[0] == str(path)
    batch = collate(examples[:64], kind)
    assert len(batch) == 64
    assert len(batch.candidates) == 64 * (1 + len(examples[0].negatives))


def test_shared_scores_and_blank_replies_are_kept(shared_data: Path) -> None:
    scores = [example.score for example in read_examples(shared_data / "stsb" / "test.jsonl")]
    assert all(score is not None and 0.0 <= score <= 5.0 for score in scores)
    preference = read_examples(shared_data / "preference_hh_rlhf" / "test.jsonl", kind="preference")
    assert preference[25].positive == " "  # line 26 of hh-rlhf: the chosen reply is a single space
