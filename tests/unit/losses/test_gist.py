"""GISTEmbed against a readable loop, sentence-transformers' GISTEmbedLoss, and with real (tiny) guide models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from torch import nn
from transformers import PreTrainedTokenizerFast

from embedkit.data import collate
from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.encoders.batching import embed_batch
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.losses import LOSSES, MaskDuplicates, TopKHardest, build_loss
from embedkit.losses.gist import GISTEmbedObjective, gist_scores
from embedkit.losses.infonce import batch_scores, info_nce_from_scores
from embedkit.training.fit import FitSettings, fit
from embedkit.training.recipe import load_config
from embedkit.types import EmbeddedBatch, Example, Kind

REPO = Path(__file__).resolve().parents[3]


def columns(b: int, n_neg: int, d: int = 8, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Model and guide embeddings of ``2 + n_neg`` columns (anchor, positive, negatives), float64.

    The guide sees each text near where the model does, and scores every positive above 0 (the relative
    margins of embedkit and sentence-transformers differ only for a guide positive below 0).
    """
    gen = torch.Generator().manual_seed(seed)
    model = [torch.randn(b, d, generator=gen, dtype=torch.float64) for _ in range(2 + n_neg)]
    guide = [x + 0.5 * torch.randn(b, d, generator=gen, dtype=torch.float64) for x in model]
    guide[1] = guide[0] + 0.6 * torch.randn(b, d, generator=gen, dtype=torch.float64)
    return model, guide


def as_batch(cols: list[torch.Tensor]) -> EmbeddedBatch:
    b = cols[0].shape[0]
    ids = torch.arange(b * len(cols))  # every text distinct
    return EmbeddedBatch(cols[0], torch.cat(cols[1:]), ids[:b], ids[b:])


@pytest.fixture(scope="module")
def objective(tiny_model_path):
    """Builds GIST objectives for tests that hand :meth:`GISTEmbedObjective.scores` the guide's embeddings."""
    guide = load_encoder(tiny_model_path, precision="fp32")

    def build(**params) -> GISTEmbedObjective:
        return GISTEmbedObjective(guide=guide, **params)

    return build


def reference_gist(model, guide, temperature, margin, mode, contrast_anchors=True, contrast_positives=True,
                   group_of=None) -> float:
    """GISTEmbed written out row by row: candidates are (model score, guide score, text) triples."""
    def cos(x, y):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    b = model[0].shape[0]
    texts = [[(c, i) for i in range(b)] for c in range(len(model))]  # (column, row) names a text
    group_of = group_of or (lambda text: text)
    total = 0.0
    for i in range(b):
        a, p, ga, gp = model[0][i], model[1][i], guide[0][i], guide[1][i]
        candidates = []  # (model score, guide score, text, is target)
        for col in range(1, len(model)):
            for j in range(b):
                candidates.append((cos(a, model[col][j]), cos(ga, guide[col][j]), texts[col][j], col == 1 and j == i))
        if contrast_anchors:
            candidates += [(cos(a, model[0][j]), cos(ga, guide[0][j]), texts[0][j], False) for j in range(b)]
        if contrast_positives:
            candidates += [(cos(p, model[1][j]), cos(gp, guide[1][j]), texts[1][j], False) for j in range(b)]
        g_pos = cos(ga, gp)
        limit = g_pos - margin if mode == "absolute" else g_pos * (1 - margin)
        # the anchor's text, and the positive of every row with the same anchor (the row's own included)
        own = {group_of(texts[0][i])} | {group_of(texts[1][j]) for j in range(b)
                                         if group_of(texts[0][j]) == group_of(texts[0][i])}
        logits, target = [], None
        for score, guide_score, text, is_target in candidates:
            if is_target:
                target = score / temperature
            elif guide_score <= limit and group_of(text) not in own:
                logits.append(score / temperature)
        logits.append(target)
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - target
    return total / b


@pytest.mark.parametrize("n_neg", [0, 2])
@pytest.mark.parametrize("mode,margin", [("absolute", 0.0), ("absolute", 0.1), ("relative", 0.05)])
@pytest.mark.parametrize("contrast", [(True, True), (False, True), (True, False), (False, False)])
def test_matches_loop_reference(objective, n_neg, mode, margin, contrast) -> None:
    model, guide = columns(6, n_neg, seed=n_neg)
    loss = objective(temperature=0.05, margin=margin, margin_mode=mode,
                     contrast_anchors=contrast[0], contrast_positives=contrast[1])
    table = loss.scores(as_batch(model), as_batch(guide))
    value = info_nce_from_scores(table, 0.05)
    assert value.item() == pytest.approx(reference_gist(model, guide, 0.05, margin, mode, *contrast), rel=1e-5)


def test_score_table_layout() -> None:
    model, _ = columns(4, 1)
    batch = as_batch(model)
    table = gist_scores(batch)
    assert table.values.shape == (4, 8 + 4 + 4)
    torch.testing.assert_close(table.values[:, :8], batch_scores(batch).values)
    anchors = torch.nn.functional.normalize(model[0].float())
    positives = torch.nn.functional.normalize(model[1].float())
    torch.testing.assert_close(table.values[:, 8:12], anchors @ anchors.T)
    torch.testing.assert_close(table.values[:, 12:], positives @ positives.T)
    assert table.candidate_groups.tolist() == [*range(4, 12), *range(4), *range(4, 8)]
    assert table.targets.tolist() == [0, 1, 2, 3]
    assert gist_scores(batch, contrast_anchors=False, contrast_positives=False).values.shape == (4, 8)


def test_duplicate_texts_are_masked_in_every_block(objective) -> None:
    model, guide = columns(4, 0, seed=3)
    # Rows 0 and 2 share their anchor text (a query with two relevant documents); row 1's positive has the
    # anchor text of row 3.
    groups = {(0, 0): 0, (0, 1): 1, (0, 2): 0, (0, 3): 3, (1, 0): 4, (1, 1): 3, (1, 2): 6, (1, 3): 7}
    batch = EmbeddedBatch(model[0], model[1], torch.tensor([0, 1, 0, 3]), torch.tensor([4, 3, 6, 7]))
    guided = EmbeddedBatch(guide[0], guide[1], batch.anchor_groups, batch.candidate_groups)
    loss = objective(temperature=0.1, margin=0.2)
    table = loss.scores(batch, guided)
    assert not table.valid[0, 4 + 2] and not table.valid[2, 4 + 0]  # the other copy of the anchor
    assert not table.valid[0, 2] and not table.valid[2, 0]  # the positive of the other copy of the anchor
    assert not table.valid[0, 8 + 2] and not table.valid[2, 8 + 0]  # the same, in the positive-positive block
    assert not table.valid[1, 4 + 3] and not table.valid[3, 1]  # anchor 3 = positive 1
    expected = reference_gist(model, guide, 0.1, 0.2, "absolute", group_of=groups.get)
    assert info_nce_from_scores(table, 0.1).item() == pytest.approx(expected, rel=1e-5)


# -- sentence-transformers ------------------------------------------------------------------------------------
_TOKENIZER = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))


class FixedEmbeddings(nn.Module):
    """Stands in for a SentenceTransformer: returns the embeddings stored in the features under ``key``.

    GISTEmbedLoss embeds the same feature dicts with the model and (shallow copies) with the guide, so each
    dict carries both models' embeddings of its column. Model and guide share a tokenizer and a maximum
    length, so GISTEmbedLoss does not retokenise.
    """

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.tokenizer = _TOKENIZER
        self.max_seq_length = 32

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": features[self.key]}


@pytest.mark.parametrize("n_neg", [0, 1])
@pytest.mark.parametrize("mode,margin", [("absolute", 0.0), ("absolute", 0.1), ("relative", 0.05)])
@pytest.mark.parametrize("contrast", [(True, True), (False, True), (True, False), (False, False)])
def test_equals_sentence_transformers_gist_value_and_gradient(objective, n_neg, mode, margin, contrast) -> None:
    model, guide = columns(8, n_neg, seed=10 + n_neg)
    ours_cols = [c.clone().requires_grad_() for c in model]
    theirs_cols = [c.clone().requires_grad_() for c in model]
    settings = {"temperature": 0.01, "margin": margin}
    settings.update(contrast_anchors=contrast[0], contrast_positives=contrast[1])
    table = objective(margin_mode=mode, **settings).scores(as_batch(ours_cols), as_batch(guide))
    ours = info_nce_from_scores(table, 0.01)
    st = GISTEmbedLoss(FixedEmbeddings("model"), FixedEmbeddings("guide"), margin_strategy=mode, **settings)
    theirs = st([{"model": m, "guide": g} for m, g in zip(theirs_cols, guide)], labels=None)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)

    ours.backward()
    theirs.backward()
    for mine, st_col in zip(ours_cols, theirs_cols):
        # embedkit scores in float32 whatever the input dtype: float32 round-off (x 1/t = 100) is the tolerance.
        torch.testing.assert_close(mine.grad, st_col.grad, rtol=1e-3, atol=1e-4)


# -- the objective with real guide models --------------------------------------------------------------------
ROWS = [
    ("the cat sat on the mat", "a cat sat on a mat", "the dog runs in the park"),
    ("she plays the piano every evening", "she plays piano at night", "he reads a book about old ships"),
    ("the train leaves at noon", "the train goes at twelve", "children build a castle of sand"),
    ("rain falls on the green hills", "it rains on the hills", "the sun rises in the east"),
]


@pytest.fixture(scope="module")
def other_guide_path(tmp_path_factory) -> Path:
    """A tiny guide with its own vocabulary (another tokenizer) and its own weights."""
    texts = ["words the guide knows", "sat mat piano train rain hills", "a completely different vocabulary"]
    return build_tiny_model(tmp_path_factory.mktemp("guide") / "model", texts, seed=5, hidden_size=16)


def text_batch(kind: Kind = Kind.TRIPLETS):
    return collate([Example(anchor=a, positive=p, negatives=(n,)) for a, p, n in ROWS], kind)


def test_a_guide_with_another_tokenizer_embeds_the_texts_itself(tiny_model_path, other_guide_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    loss = GISTEmbedObjective(guide=str(other_guide_path), margin=0.05)
    assert loss.guide.model.tokenizer.get_vocab() != encoder.model.tokenizer.get_vocab()
    loss.train()
    assert not loss.guide.training and not any(p.requires_grad for p in loss.guide.parameters())
    batch = text_batch()
    encoder.eval()  # no dropout: the value below must be reproducible from the two models' embeddings
    value = loss(encoder, batch)
    value.backward()
    assert math.isfinite(value.item())
    with torch.no_grad():
        expected = info_nce_from_scores(loss.scores(embed_batch(encoder, batch), embed_batch(loss.guide, batch)), 0.01)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fit_runs_two_steps_and_leaves_the_guide_out_of_the_checkpoint(tiny_model_path, other_guide_path,
                                                                         tmp_path) -> None:
    rows = [Example(anchor=a, positive=p) for a, p, _ in ROWS] * 2
    encoder = load_encoder(tiny_model_path, precision="fp32")
    loss = build_loss("gist", guide=str(other_guide_path), filters=[{"name": "top-k", "k": 2}])
    guide_before = {k: v.clone() for k, v in loss.guide.state_dict().items()}
    settings = FitSettings(output_dir=tmp_path, batch_size=4, max_steps=2, show_progress=False, save_steps=10)
    result = fit(encoder, rows, loss, settings, kind="pairs")
    assert result.steps == 2 and all(math.isfinite(r["loss"]) for r in result.history if "loss" in r)
    for name, value in loss.guide.state_dict().items():
        assert torch.equal(value, guide_before[name]), name
    loss_state = tmp_path / "checkpoint" / "loss.safetensors"
    assert not loss_state.exists() or not any("guide" in key for key in load_file(str(loss_state)))


def test_wrong_configurations_get_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs a guide model"):
        build_loss("gist")
    with pytest.raises(EmbedkitError, match="guide model .*not found"):
        build_loss("gist", guide=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="unknown margin mode 'percent'; valid: absolute, relative"):
        build_loss("gist", guide=str(tmp_path / "no-such-model"), margin_mode="percent")
    with pytest.raises(ConfigError, match="temperature"):
        build_loss("gist", guide=str(tmp_path / "no-such-model"), temperature=0.0)


def test_gradients_finite_on_adversarial_inputs(objective) -> None:
    for fill in (torch.zeros, torch.ones):
        for temperature in (1e-4, 1e4):
            anchors = fill(4, 8).requires_grad_()
            candidates = torch.ones(8, 8).requires_grad_()
            ids = torch.arange(12)
            batch = EmbeddedBatch(anchors, candidates, ids[:4], ids[4:])
            guided = EmbeddedBatch(fill(4, 8), torch.ones(8, 8), ids[:4], ids[4:])
            loss = objective(temperature=temperature, steps=(MaskDuplicates(), TopKHardest(3)))
            value = info_nce_from_scores(loss.scores(batch, guided), temperature)
            value.backward()
            assert torch.isfinite(value)
            assert torch.isfinite(anchors.grad).all() and torch.isfinite(candidates.grad).all()


def test_registered_with_its_parameters() -> None:
    spec = LOSSES.get("gist")
    assert spec.parameters() == {
        "guide": None, "temperature": 0.01, "margin": 0.0, "margin_mode": "absolute", "contrast_anchors": True,
        "contrast_positives": True, "filters": (), "mask_duplicates": True,
    }
    assert "Solatorio" in spec.reference and Kind.SENTENCES not in spec.kinds


def test_recipe_loads_and_builds_with_the_offline_default_guide() -> None:
    config = load_config(REPO / "recipes" / "gist.toml")
    spec = LOSSES.get(config.loss.name)
    loss = spec.build(**config.loss.params)
    assert isinstance(loss, GISTEmbedObjective) and loss.guide.dim == 384
    assert Kind(config.data.kind) in spec.kinds and (REPO / config.data.path).is_file()
