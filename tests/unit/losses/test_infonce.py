"""InfoNCE against a readable numpy loop, closed forms and sentence-transformers' MultipleNegativesRankingLoss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from embedkit.errors import ConfigError, UnknownNameError
from embedkit.losses import LOSSES, InfoNCELoss, MaskDuplicates, build_loss
from embedkit.types import EmbeddedBatch


def make_batch(b: int, n_neg: int, d: int = 8, seed: int = 0, groups: list[int] | None = None) -> EmbeddedBatch:
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(b, d, generator=gen, dtype=torch.float64)
    candidates = torch.randn(b * (1 + n_neg), d, generator=gen, dtype=torch.float64)
    ids = torch.arange(b + b * (1 + n_neg))
    if groups is not None:
        ids = torch.tensor(groups)
    return EmbeddedBatch(anchors, candidates, ids[:b], ids[b:])


def reference_infonce(anchors, candidates, anchor_ids, candidate_ids, temperature: float) -> float:
    """Loop form of InfoNCE with duplicate masking: one softmax per anchor over its usable candidates.

    A candidate is unusable as a negative when it has the anchor's text or the text of the positive of any row
    whose anchor has the anchor's text (its own included)."""
    anchors = np.asarray(anchors, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.float64)
    total = 0.0
    for i, a in enumerate(anchors):
        positives = {candidate_ids[k] for k in range(len(anchors)) if anchor_ids[k] == anchor_ids[i]}
        logits = []
        for j, c in enumerate(candidates):
            duplicate = candidate_ids[j] == anchor_ids[i] or candidate_ids[j] in positives
            if j != i and duplicate:
                continue
            cosine = a @ c / (np.linalg.norm(a) * np.linalg.norm(c))
            logits.append((j, cosine / temperature))
        values = np.array([v for _, v in logits])
        log_z = np.log(np.exp(values - values.max()).sum()) + values.max()
        positive = dict(logits)[i]
        total += log_z - positive
    return total / len(anchors)


@pytest.mark.parametrize("n_neg", [0, 1, 3])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_matches_loop_reference(n_neg: int, temperature: float) -> None:
    batch = make_batch(6, n_neg)
    value = InfoNCELoss(temperature=temperature)(batch)
    expected = reference_infonce(
        batch.anchors, batch.candidates, batch.anchor_groups.tolist(), batch.candidate_groups.tolist(), temperature
    )
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_duplicate_texts_are_masked_like_the_reference() -> None:
    # Rows 0 and 2 hold the same sentence (unsupervised SimCSE: anchor = positive = text).
    groups = [0, 1, 0, 3, 0, 1, 0, 3]
    batch = make_batch(4, 0, groups=groups)
    loss = InfoNCELoss(temperature=0.1)
    table = loss.scores(batch)
    assert not table.valid[0, 2] and not table.valid[2, 0]
    assert table.valid[0, 0] and table.valid[0, 1] and table.valid[0, 3]
    expected = reference_infonce(batch.anchors, batch.candidates, groups[:4], groups[4:], 0.1)
    assert loss(batch).item() == pytest.approx(expected, rel=1e-6)


def test_a_query_with_several_relevant_documents_never_has_one_as_a_negative() -> None:
    # Rows 0 and 2 hold the same query with two different relevant documents (4 and 6), each row with a mined
    # hard negative; row 2's document is row 0's positive too, and the reverse. Row 1's negative has the text of
    # row 2's document: also a known positive of rows 0 and 2, not of row 1.
    groups = [0, 1, 0, 3, 4, 5, 6, 7, 8, 6, 10, 11]
    batch = make_batch(4, 1, groups=groups)
    table = InfoNCELoss(temperature=0.1).scores(batch)
    assert not table.valid[0, 2] and not table.valid[2, 0]
    assert not table.valid[0, 5] and not table.valid[2, 5]  # row 1's negative: document 6, a positive of query 0
    assert table.valid[1, 5] and table.valid[1, 0] and table.valid[1, 2]
    assert table.valid[0, 4] and table.valid[2, 6]  # each copy's own hard negative stays
    expected = reference_infonce(batch.anchors, batch.candidates, groups[:4], groups[4:], 0.1)
    assert InfoNCELoss(temperature=0.1)(batch).item() == pytest.approx(expected, rel=1e-6)


def test_duplicate_masking_can_be_turned_off() -> None:
    batch = make_batch(4, 0, groups=[0, 1, 0, 3, 0, 1, 0, 3])
    assert InfoNCELoss(steps=()).scores(batch).valid.all()
    assert InfoNCELoss(steps=(MaskDuplicates(),)).scores(batch).valid.sum() == 16 - 2


@pytest.mark.parametrize("b,n_neg", [(4, 0), (5, 2)])
def test_all_equal_scores_give_log_c(b: int, n_neg: int) -> None:
    """Identical embeddings make every logit equal, so the loss is log of the number of candidates."""
    anchors = torch.ones(b, 4)
    candidates = torch.ones(b * (1 + n_neg), 4)
    ids = torch.arange(b + b * (1 + n_neg))
    batch = EmbeddedBatch(anchors, candidates, ids[:b], ids[b:])
    assert InfoNCELoss(temperature=0.05)(batch).item() == pytest.approx(math.log(b * (1 + n_neg)), rel=1e-6)


def test_perfect_separation_approaches_zero() -> None:
    eye = torch.eye(4)
    batch = EmbeddedBatch(eye, eye.clone(), torch.arange(4), torch.arange(4, 8))
    # Positive logit 100, negatives 0: loss = log(1 + 3 e^-100), far below float32's resolution around 0.
    assert InfoNCELoss(temperature=0.01)(batch).item() == pytest.approx(0.0, abs=1e-30)


def test_symmetric_is_mean_of_both_directions() -> None:
    batch = make_batch(5, 0)
    forward = InfoNCELoss(temperature=0.2)(batch)
    swapped = EmbeddedBatch(batch.candidates, batch.anchors, batch.candidate_groups, batch.anchor_groups)
    backward = InfoNCELoss(temperature=0.2)(swapped)
    symmetric = InfoNCELoss(temperature=0.2, symmetric=True)(batch)
    assert symmetric.item() == pytest.approx((forward.item() + backward.item()) / 2, rel=1e-9)


def _st_value(st_loss: MultipleNegativesRankingLoss, batch: EmbeddedBatch, n_neg: int) -> torch.Tensor:
    b = batch.batch_size
    columns = [batch.anchors] + [batch.candidates[k * b : (k + 1) * b] for k in range(1 + n_neg)]
    return st_loss.compute_loss_from_embeddings(columns, labels=None)


@pytest.mark.parametrize("n_neg", [0, 1, 2])
def test_equals_sentence_transformers_mnrl_value_and_gradient(n_neg: int) -> None:
    batch = make_batch(8, n_neg, d=16, seed=3)
    ours_inputs = (batch.anchors.clone().requires_grad_(), batch.candidates.clone().requires_grad_())
    theirs_inputs = (batch.anchors.clone().requires_grad_(), batch.candidates.clone().requires_grad_())

    ours = InfoNCELoss(temperature=1 / 20)(EmbeddedBatch(*ours_inputs, batch.anchor_groups, batch.candidate_groups))
    mnrl = MultipleNegativesRankingLoss(model=None, scale=20.0)
    theirs = _st_value(mnrl, EmbeddedBatch(*theirs_inputs, batch.anchor_groups, batch.candidate_groups), n_neg)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)

    ours.backward()
    theirs.backward()
    for mine, st in zip(ours_inputs, theirs_inputs):
        # embedkit scores in float32 whatever the input dtype: float32 round-off is the tolerance.
        torch.testing.assert_close(mine.grad, st.grad.to(mine.grad.dtype), rtol=1e-4, atol=1e-6)


def test_symmetric_equals_mnrl_per_direction_on_pairs() -> None:
    batch = make_batch(8, 0, d=16, seed=5)
    ours = InfoNCELoss(temperature=0.05, symmetric=True)(batch)
    mnrl = MultipleNegativesRankingLoss(
        model=None, scale=20.0, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"
    )
    assert ours.item() == pytest.approx(_st_value(mnrl, batch, 0).item(), rel=1e-6)


def test_bfloat16_embeddings_give_float32_loss() -> None:
    batch = make_batch(4, 1)
    half = EmbeddedBatch(batch.anchors.bfloat16(), batch.candidates.bfloat16(), batch.anchor_groups, batch.candidate_groups)
    assert InfoNCELoss()(half).dtype == torch.float32


def test_gradients_finite_on_adversarial_inputs() -> None:
    zeros = torch.zeros(4, 8, requires_grad=True)
    same = torch.ones(4, 8, requires_grad=True)
    ids = torch.arange(8)
    for anchors, candidates in [(zeros, same), (same, same)]:
        for temperature in (1e-4, 1e4):
            value = InfoNCELoss(temperature=temperature)(EmbeddedBatch(anchors, candidates, ids[:4], ids[4:]))
            value.backward()
            assert torch.isfinite(value)
            assert torch.isfinite(anchors.grad).all() and torch.isfinite(candidates.grad).all()
            anchors.grad = None
            candidates.grad = None


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_bad_temperature_is_refused(temperature: float) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        InfoNCELoss(temperature=temperature)


def test_registry_presets_and_errors() -> None:
    assert {"infonce", "simcse-unsup", "simcse-sup"} <= set(LOSSES.names())
    assert build_loss("simcse-unsup").temperature == 0.05
    assert build_loss("infonce", temperature=0.1, symmetric=True).symmetric
    with pytest.raises(UnknownNameError, match="simcse-unsup"):
        build_loss("simcse")
    with pytest.raises(ConfigError, match="valid parameters: temperature, symmetric"):
        build_loss("infonce", temprature=0.1)
