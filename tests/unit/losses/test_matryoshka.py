"""Matryoshka: the wrapped loss summed over leading-dimension cuts, against losses computed by hand on cut
embeddings, closed forms and sentence-transformers' MatryoshkaLoss; where the cut goes in queues and GISTEmbed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TEXTS
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss as STMatryoshkaLoss
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from embedkit.data import collate
from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.encoders.batching import embed_batch
from embedkit.errors import ConfigError
from embedkit.losses import InfoNCELoss, MatryoshkaLoss, Objective, build_loss, matryoshka
from embedkit.losses.cosent import CoSENTLoss
from embedkit.losses.debiased import DebiasedInfoNCELoss
from embedkit.losses.gist import GISTEmbedObjective
from embedkit.losses.matryoshka import MatryoshkaGISTObjective, truncated_batch
from embedkit.losses.queue import MemoryQueue, MomentumQueueObjective
from embedkit.types import EmbeddedBatch, Example, Kind

DIMS = (16, 8, 3)


def random_batch(b: int = 6, n_neg: int = 1, d: int = 16, seed: int = 0, scored: bool = False) -> EmbeddedBatch:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(b * (2 + n_neg))
    scores = torch.randint(0, 6, (b,), generator=gen).float() if scored else None
    return EmbeddedBatch(
        torch.randn(b, d, generator=gen, dtype=torch.float64).requires_grad_(),
        torch.randn(b * (1 + n_neg), d, generator=gen, dtype=torch.float64).requires_grad_(),
        ids[:b],
        ids[b:],
        scores=scores,
    )


def hand_infonce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with every text distinct, written out: cosine of normalised rows, cross-entropy on the diagonal."""
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T / temperature
    positive = logits[torch.arange(len(anchors)), torch.arange(len(anchors))]
    return (torch.logsumexp(logits, dim=1) - positive).mean()


@pytest.mark.parametrize("weights", [None, (1.0, 0.5, 2.0)])
def test_equals_the_weighted_sum_of_infonce_on_cut_embeddings_by_hand(weights) -> None:
    batch = random_batch()
    value = MatryoshkaLoss(InfoNCELoss(temperature=0.1), DIMS, weights)(batch)
    value.backward()
    got = (batch.anchors.grad.clone(), batch.candidates.grad.clone())

    anchors = batch.anchors.detach().clone().requires_grad_()
    candidates = batch.candidates.detach().clone().requires_grad_()
    expected = sum(w * hand_infonce(anchors[:, :d], candidates[:, :d], 0.1)
                   for d, w in zip(DIMS, weights or (1, 1, 1), strict=True))
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(got[0], anchors.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got[1], candidates.grad, rtol=1e-4, atol=1e-7)


def test_the_dimensions_beyond_the_largest_cut_get_no_gradient() -> None:
    batch = random_batch(d=20)
    MatryoshkaLoss(InfoNCELoss(), DIMS)(batch).backward()
    assert batch.anchors.grad[:, 16:].abs().max() == 0 and batch.candidates.grad[:, 16:].abs().max() == 0
    assert batch.anchors.grad[:, :16].abs().min() > 0


def test_equal_embeddings_give_the_sum_of_weights_times_log_c() -> None:
    """Every cut of identical embeddings scores every candidate alike: each cut's loss is log C."""
    b, n_neg = 4, 2
    ids = torch.arange(b * (2 + n_neg))
    batch = EmbeddedBatch(torch.ones(b, 16), torch.ones(b * (1 + n_neg), 16), ids[:b], ids[b:])
    value = MatryoshkaLoss(InfoNCELoss(temperature=0.05), DIMS, (1.0, 2.0, 0.5))(batch)
    assert value.item() == pytest.approx(3.5 * math.log(b * (1 + n_neg)), rel=1e-6)


def test_embeddings_zero_beyond_the_smallest_cut_make_every_cut_the_same_loss() -> None:
    batch = random_batch(d=16)
    head = batch.anchors.detach()[:, :3], batch.candidates.detach()[:, :3]
    padded = EmbeddedBatch(F.pad(head[0], (0, 13)), F.pad(head[1], (0, 13)), batch.anchor_groups, batch.candidate_groups)
    one = InfoNCELoss(temperature=0.1)(padded)
    assert MatryoshkaLoss(InfoNCELoss(temperature=0.1), DIMS)(padded).item() == pytest.approx(3 * one.item(), rel=1e-6)


FILTERS = [{"name": "margin", "margin": 0.1, "mode": "relative"}, {"name": "top-k", "k": 2}]


@pytest.mark.parametrize("loss", [
    build_loss("infonce", temperature=0.1, filters=FILTERS),
    build_loss("infonce", temperature=0.1, symmetric=True),
    DebiasedInfoNCELoss(temperature=0.5, tau_plus=0.1),
    CoSENTLoss(scale=20.0),
], ids=["filtered", "symmetric", "debiased", "cosent"])
def test_every_embedding_loss_is_summed_over_its_own_cut_tables(loss) -> None:
    """Filter steps judge each cut's own scores: a negative may be dropped at 3 dimensions and kept at 16."""
    batch = random_batch(scored=True, seed=4)
    expected = sum(loss(truncated_batch(batch, d)) for d in DIMS)
    assert matryoshka(loss, DIMS)(batch).item() == pytest.approx(expected.item(), rel=1e-9)


def test_the_filters_keep_other_negatives_at_other_cuts() -> None:
    """What makes the test above tell a per-cut filter from one mask for every cut."""
    loss = build_loss("infonce", temperature=0.1, filters=FILTERS)
    batch = random_batch(scored=True, seed=4)
    assert not torch.equal(loss.scores(truncated_batch(batch, 16)).valid, loss.scores(truncated_batch(batch, 3)).valid)


# -- sentence-transformers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("nodrop") / "m", TINY_TEXTS, seed=5, dropout=0.0)


@pytest.mark.parametrize("weights", [None, (2.0, 1.0, 0.5)])
def test_equals_sentence_transformers_matryoshka_over_mnrl(no_dropout_model, weights) -> None:
    """The same tiny model and pairs: MatryoshkaLoss(model, MultipleNegativesRankingLoss(model)) against
    matryoshka(InfoNCE at temperature 1/20), loss and every weight's gradient."""
    dims = (32, 16, 4)
    anchors, positives = TINY_TEXTS[:4], TINY_TEXTS[4:]
    model = SentenceTransformer(str(no_dropout_model), device="cpu")
    st_loss = STMatryoshkaLoss(model, MultipleNegativesRankingLoss(model), list(dims), weights and list(weights))
    theirs = st_loss([model.preprocess(anchors), model.preprocess(positives)], labels=None)
    theirs.backward()

    encoder = load_encoder(no_dropout_model, device="cpu", precision="fp32")
    batch = collate([Example(anchor=a, positive=p) for a, p in zip(anchors, positives, strict=True)], Kind.PAIRS)
    ours = matryoshka(build_loss("infonce", temperature=1 / 20), dims, weights)(embed_batch(encoder, batch))
    ours.backward()

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    mine = dict(encoder.model.named_parameters())
    for name, parameter in model.named_parameters():
        # sentence-transformers 6.3 normalizes each cut of the already normalized larger cut: in float64 both equal
        # the plain sum to 1e-14; in float32 the rounding differs by up to 3e-6 of the gradient's largest entry.
        scale = 0.0 if parameter.grad is None else parameter.grad.abs().max().item()
        atol = 1e-5 * max(1.0, scale)
        torch.testing.assert_close(mine[name].grad, parameter.grad, rtol=1e-4, atol=atol, msg=name)


# -- where the cut goes -------------------------------------------------------------------------------------------
def test_a_queue_keeps_past_positives_whole_and_enqueues_once_per_step() -> None:
    queue = matryoshka(build_loss("infonce-queue", temperature=0.1, queue_size=32), DIMS)
    assert isinstance(queue, MemoryQueue) and isinstance(queue.loss, MatryoshkaLoss)
    first, second = random_batch(seed=1), random_batch(seed=2)
    second = EmbeddedBatch(second.anchors, second.candidates, second.anchor_groups + 100, second.candidate_groups + 100)
    queue.train()
    queue(first)
    assert int(queue.count) == 6  # one batch's positives, not one per cut
    assert queue.embeddings.shape[1] == 16
    queued, ids = queue.entries()
    extended = EmbeddedBatch(second.anchors, torch.cat([second.candidates, queued.double()]), second.anchor_groups,
                             torch.cat([second.candidate_groups, ids]))
    expected = sum(InfoNCELoss(temperature=0.1)(truncated_batch(extended, d)) for d in DIMS)
    assert queue(second).item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_momentum_queue_keeps_its_momentum() -> None:
    objective = matryoshka(build_loss("infonce-queue", queue_size=8, momentum=0.9), DIMS, (1, 1, 2))
    assert isinstance(objective, MomentumQueueObjective) and objective.momentum == 0.9
    assert isinstance(objective.queue.loss, MatryoshkaLoss) and objective.queue.loss.weights == (1.0, 1.0, 2.0)


def test_gist_cuts_the_models_embeddings_and_keeps_the_guides(tiny_model_path) -> None:
    guide = load_encoder(tiny_model_path, precision="fp32")
    gist = GISTEmbedObjective(guide=guide, temperature=0.1, margin=0.05)
    wrapped = matryoshka(gist, DIMS)
    assert isinstance(wrapped, MatryoshkaGISTObjective)
    embedded, guided = random_batch(seed=6), random_batch(seed=7, d=32)
    expected = sum(gist.guided_loss(truncated_batch(embedded, d), guided) for d in DIMS)
    assert wrapped.guided_loss(embedded, guided).item() == pytest.approx(expected.item(), rel=1e-9)

    encoder = load_encoder(tiny_model_path, precision="fp32")
    encoder.eval()
    batch = collate([Example(anchor=a, positive=p) for a, p in zip(TINY_TEXTS[:4], TINY_TEXTS[4:])], Kind.PAIRS)
    value = wrapped(encoder, batch)
    by_hand = wrapped.guided_loss(embed_batch(encoder, batch), gist.guide_embeddings(batch))
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-6)


class TokenObjective(Objective):
    def forward(self, encoder, batch):
        raise AssertionError("never called")


@pytest.mark.parametrize("objective", [build_loss("dclr"), build_loss("reward-bt"), TokenObjective()],
                         ids=["dclr", "reward-bt", "any-objective"])
def test_objectives_that_need_more_than_embeddings_are_refused(objective) -> None:
    with pytest.raises(ConfigError, match=f"needs a loss of the embeddings alone.*{type(objective).__name__}"):
        matryoshka(objective, DIMS)


@pytest.mark.parametrize("dims,weights,message", [
    ([], None, "at least one dimension"),
    ([16, 0], None, "positive integers, got 0"),
    ([8, 8], None, "names 8 more than once"),
    ([8.0], None, "positive integers"),
    ("16", None, "must be a list"),
    ([16, 8], [1.0], "gives 1 weight for 2 matryoshka_dims"),
    ([16, 8], [1.0, 0.0], "above 0, got 0.0"),
    ([16, 8], [], "at least one weight"),
])
def test_bad_dimensions_and_weights_are_one_line_errors(dims, weights, message) -> None:
    with pytest.raises(ConfigError, match=message):
        matryoshka(InfoNCELoss(), dims, weights)


def test_a_cut_wider_than_the_embeddings_is_refused() -> None:
    with pytest.raises(ConfigError, match="matryoshka_dims 32 exceeds the 16 dimensions"):
        matryoshka(InfoNCELoss(), (32, 8))(random_batch())


def test_wrapping_an_objective_directly_points_to_matryoshka(tiny_model_path) -> None:
    with pytest.raises(ConfigError, match="use matryoshka"):
        MatryoshkaLoss(GISTEmbedObjective(guide=load_encoder(tiny_model_path)), DIMS)


def test_bfloat16_embeddings_give_a_float32_loss() -> None:
    batch = random_batch()
    half = EmbeddedBatch(batch.anchors.detach().bfloat16(), batch.candidates.detach().bfloat16(),
                         batch.anchor_groups, batch.candidate_groups)
    value = matryoshka(InfoNCELoss(), DIMS)(half)
    assert value.dtype == torch.float32 and np.isfinite(value.item())
