"""Tests of embedkit.data.collate: batch shape, candidate order, group ids and scores."""

from __future__ import annotations

import pytest
import torch

from embedkit.data import collate
from embedkit.data.collate import text_id, text_ids
from embedkit.losses import InfoNCELoss
from embedkit.types import PADDING_GROUP, EmbeddedBatch, Example, Kind


def test_pairs_batch_keeps_order_and_numbers_distinct_texts() -> None:
    batch = collate([Example("q1", "d1"), Example("q2", "d2"), Example("q3", "d3")], Kind.PAIRS)
    assert batch.kind is Kind.PAIRS
    assert len(batch) == 3
    assert (batch.anchors, batch.positives, batch.negatives) == (["q1", "q2", "q3"], ["d1", "d2", "d3"], [])
    assert batch.candidates == ["d1", "d2", "d3"]
    assert batch.anchor_groups.tolist() == text_ids(["q1", "q2", "q3"]).tolist()
    assert batch.candidate_groups.tolist() == text_ids(["d1", "d2", "d3"]).tolist()
    assert len(set(batch.anchor_groups.tolist() + batch.candidate_groups.tolist())) == 6
    assert batch.anchor_groups.dtype == batch.candidate_groups.dtype == torch.long
    assert batch.scores is None


def test_sentences_with_the_same_text_share_a_group() -> None:
    examples = [Example(text, text) for text in ["a cat", "a dog", "a cat", "a bird"]]
    batch = collate(examples, Kind.SENTENCES)
    ids = batch.anchor_groups.tolist()
    assert ids[0] == ids[2] and len(set(ids)) == 3
    assert torch.equal(batch.candidate_groups, batch.anchor_groups)


def test_triplet_candidates_are_positives_then_negatives_column_by_column() -> None:
    examples = [Example("q1", "d1", ("n1a", "n1b")), Example("q2", "d2", ("n2a", "d1"))]
    batch = collate(examples, Kind.TRIPLETS)
    assert batch.negatives == [["n1a", "n2a"], ["n1b", "d1"]]
    assert batch.candidates == ["d1", "d2", "n1a", "n2a", "n1b", "d1"]
    groups = batch.candidate_groups.tolist()
    assert groups[5] == groups[0] and len(set(groups)) == 5  # row 2's second negative is row 1's positive


def test_an_anchor_repeated_as_a_candidate_shares_its_group() -> None:
    batch = collate([Example("a", "b"), Example("b", "c")], Kind.PAIRS)
    assert batch.anchor_groups[1] == batch.candidate_groups[0] == text_id("b")


def test_scores_are_a_float_tensor_when_every_row_has_one() -> None:
    batch = collate([Example("a", "b", score=1.5), Example("c", "d", score=4)], Kind.SCORED)
    assert batch.scores is not None
    assert batch.scores.dtype == torch.float32
    assert batch.scores.tolist() == [1.5, 4.0]
    assert collate([Example("a", "b", score=1.5), Example("c", "d")], Kind.SCORED).scores is None


def test_rows_with_fewer_negatives_are_padded_with_an_uncounted_group() -> None:
    examples = [Example("q1", "d1", ("n1", "n2")), Example("q2", "d2", ("n3",)), Example("q3", "d3")]
    batch = collate(examples, Kind.TRIPLETS)
    assert batch.negatives == [["n1", "n3", ""], ["n2", "", ""]]
    groups = batch.candidate_groups.tolist()
    assert groups[:5] == text_ids(["d1", "d2", "d3", "n1", "n3"]).tolist()
    assert groups[5:] == [PADDING_GROUP, text_id("n2"), PADDING_GROUP, PADDING_GROUP]


def test_a_padded_row_trains_as_if_its_padding_were_absent() -> None:
    # InfoNCE over the padded batch equals InfoNCE over the same rows with the padding columns cut out
    torch.manual_seed(0)
    examples = [Example("q1", "d1", ("n1",)), Example("q2", "d2"), Example("q3", "d3", ("n3",))]
    batch = collate(examples, Kind.TRIPLETS)
    anchors, candidates = torch.randn(3, 8), torch.randn(6, 8)
    loss = InfoNCELoss(temperature=0.1)
    padded = loss(EmbeddedBatch(anchors, candidates, batch.anchor_groups, batch.candidate_groups))
    kept = [0, 1, 2, 3, 5]  # candidate 4 is q2's padding
    expected = loss(EmbeddedBatch(anchors, candidates[kept], batch.anchor_groups, batch.candidate_groups[kept]))
    torch.testing.assert_close(padded, expected)


def test_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate([], Kind.PAIRS)


def test_text_ids_are_stable_signed_64_bit_values() -> None:
    # Fixed values: ids must not change between processes or releases (checkpointed queues keep them).
    assert text_id("a cat") == -6711169336525982361
    assert text_id("a cat") != text_id("a cat ")
    assert -(2**63) <= text_id("") < 2**63
    assert text_ids(["x", "y"]).dtype == torch.long


def test_prompts_go_before_each_column_and_leave_the_groups_of_the_plain_texts() -> None:
    from embedkit.data import ColumnPrompts

    examples = [Example("q1", "d1", ("n1", "n2")), Example("d1", "d2", ("n3",))]
    plain = collate(examples, Kind.TRIPLETS)
    batch = collate(examples, Kind.TRIPLETS, ColumnPrompts(anchor="query: ", positive="passage: ", negative="neg: "))
    assert batch.anchors == ["query: q1", "query: d1"] and batch.positives == ["passage: d1", "passage: d2"]
    assert batch.negatives == [["neg: n1", "neg: n3"], ["neg: n2", ""]]  # padding stays empty
    assert torch.equal(batch.anchor_groups, plain.anchor_groups)
    assert torch.equal(batch.candidate_groups, plain.candidate_groups)
    assert batch.anchor_groups[1] == batch.candidate_groups[0]  # "d1" is one item as an anchor and as a positive
    unprompted = collate(examples, Kind.TRIPLETS, ColumnPrompts(anchor="query: "))
    assert unprompted.positives == plain.positives and unprompted.negatives == plain.negatives
