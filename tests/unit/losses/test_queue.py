"""The memory queue: FIFO semantics, InfoNCE over batch and queue against a loop, masking, momentum, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embedkit.data import collate
from embedkit.encoders import load_encoder
from embedkit.encoders.batching import embed_batch
from embedkit.errors import ConfigError
from embedkit.losses import LOSSES, InfoNCELoss, MaskDuplicates, TopKHardest, build_loss
from embedkit.losses.queue import MemoryQueue, MomentumQueueObjective, positive_columns
from embedkit.training.fit import FitSettings, fit
from embedkit.training.recipe import load_config
from embedkit.types import EmbeddedBatch, Example, Kind

REPO = Path(__file__).resolve().parents[3]


def random_batch(b: int, d: int = 6, seed: int = 0, first_id: int = 0, n_neg: int = 0) -> EmbeddedBatch:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(first_id, first_id + b * (2 + n_neg))
    return EmbeddedBatch(
        torch.randn(b, d, generator=gen, dtype=torch.float64),
        torch.randn(b * (1 + n_neg), d, generator=gen, dtype=torch.float64),
        ids[:b],
        ids[b:],
    )


def reference_infonce(batch: EmbeddedBatch, queued: list[tuple[np.ndarray, int]], temperature: float) -> float:
    """One softmax per anchor over the batch's candidates and then the queued (vector, text id) entries,
    skipping any candidate other than the target with the anchor's or positive's text."""
    anchors = batch.anchors.detach().double().numpy()
    candidates = [(c, int(g)) for c, g in zip(batch.candidates.detach().double().numpy(), batch.candidate_groups)]
    candidates += queued
    total = 0.0
    for i, a in enumerate(anchors):
        own = (int(batch.anchor_groups[i]), candidates[i][1])
        logits = {}
        for j, (c, text) in enumerate(candidates):
            if j != i and text in own:
                continue
            logits[j] = a @ c / (np.linalg.norm(a) * np.linalg.norm(c)) / temperature
        values = np.array(list(logits.values()))
        total += np.log(np.exp(values - values.max()).sum()) + values.max() - logits[i]
    return total / len(anchors)


def test_fifo_keeps_the_newest_entries_oldest_first() -> None:
    queue = MemoryQueue(InfoNCELoss(), size=4)
    assert queue.entries()[1].tolist() == []
    vectors = torch.randn(11, 3)
    queue.enqueue(vectors[:3], torch.tensor([1, 2, 3]))
    assert queue.entries()[1].tolist() == [1, 2, 3]
    queue.enqueue(vectors[3:5], torch.tensor([4, 5]))  # the first overwrites the oldest
    assert queue.entries()[1].tolist() == [2, 3, 4, 5]
    queue.enqueue(vectors[5:], torch.arange(6, 12))  # more than the queue holds: only the last 4 stay
    embeddings, ids = queue.entries()
    assert ids.tolist() == [8, 9, 10, 11]
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(vectors[7:]))
    assert int(queue.count) == 4


def test_an_empty_queue_leaves_infonce_unchanged() -> None:
    batch = random_batch(5)
    queue = MemoryQueue(InfoNCELoss(temperature=0.1), size=8)
    assert queue(batch).item() == InfoNCELoss(temperature=0.1)(batch).item()


@pytest.mark.parametrize("n_neg", [0, 1])
def test_loss_is_infonce_over_batch_and_queue(n_neg: int) -> None:
    """Three steps through a queue of 7: the third step sees the last 7 positives of steps 1 and 2."""
    b, size, temperature = 4, 7, 0.2
    queue = MemoryQueue(InfoNCELoss(temperature=temperature), size=size)
    seen: list[tuple[np.ndarray, int]] = []
    for step in range(3):
        batch = random_batch(b, seed=step, first_id=100 * step, n_neg=n_neg)
        expected = reference_infonce(batch, seen[-size:], temperature)
        assert queue(batch).item() == pytest.approx(expected, rel=1e-6)
        positives = batch.candidates[:b] / batch.candidates[:b].norm(dim=1, keepdim=True)
        seen += [(p.numpy(), int(g)) for p, g in zip(positives, batch.candidate_groups[:b])]
    assert queue.entries()[1].tolist() == [g for _, g in seen[-size:]]


def test_queued_copies_of_the_anchor_or_positive_text_are_masked() -> None:
    queue = MemoryQueue(InfoNCELoss(temperature=0.1), size=8)
    first = random_batch(3, seed=1, first_id=0)  # positives are texts 3, 4, 5
    queue(first)
    second = random_batch(3, seed=2, first_id=10)
    # Row 0 of the second batch has the anchor text 3, row 1 the positive text 5.
    second = EmbeddedBatch(second.anchors, second.candidates, torch.tensor([3, 11, 12]), torch.tensor([13, 5, 15]))
    table = queue.loss.scores(queue.extend(second))
    assert table.values.shape == (3, 6)
    assert table.valid[0].tolist() == [True, True, True, False, True, True]
    assert table.valid[1].tolist() == [True, True, True, True, True, False]
    assert table.valid[2].all()
    queued = [(e.numpy(), int(g)) for e, g in zip(*queue.entries())]
    assert queue(second).item() == pytest.approx(reference_infonce(second, queued, 0.1), rel=1e-6)


def test_filter_steps_see_queue_entries() -> None:
    queue = MemoryQueue(InfoNCELoss(steps=(MaskDuplicates(), TopKHardest(1))), size=8)
    queue(random_batch(4, seed=1, first_id=0))
    table = queue.loss.scores(queue.extend(random_batch(4, seed=2, first_id=50)))
    assert table.values.shape == (4, 8) and (table.valid.sum(dim=1) == 2).all()
    hardest = table.values.masked_fill(table.target_mask(), -2).argmax(dim=1)
    assert table.valid[torch.arange(4), hardest].all()


def test_nothing_is_enqueued_in_eval_mode() -> None:
    queue = MemoryQueue(InfoNCELoss(), size=8).eval()
    queue(random_batch(4))
    assert int(queue.count) == 0


def test_positive_columns_of_a_gathered_batch() -> None:
    local = random_batch(2, n_neg=1)  # C = 4 per rank: 2 positives, 2 negatives
    assert positive_columns(local).tolist() == [0, 1]
    gathered = EmbeddedBatch(local.anchors, torch.cat([local.candidates, local.candidates]), local.anchor_groups,
                             torch.arange(8), target_offset=4, anchor_pool=torch.cat([local.anchors] * 2))
    assert positive_columns(gathered).tolist() == [0, 1, 4, 5]


def test_queue_state_survives_a_round_trip_through_safetensors(tmp_path) -> None:
    queue = MemoryQueue(InfoNCELoss(), size=5)
    for step in range(3):
        queue(random_batch(2, seed=step, first_id=10 * step))
    save_file({k: v.contiguous() for k, v in queue.state_dict().items()}, str(tmp_path / "loss.safetensors"))
    restored = MemoryQueue(InfoNCELoss(), size=5)  # a fresh process: the queue has its placeholder shape
    restored.load_state_dict(load_file(str(tmp_path / "loss.safetensors")))
    for mine, theirs in zip(restored.entries(), queue.entries()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    batch = random_batch(2, seed=9, first_id=90)
    assert restored(batch).item() == queue(batch).item()
    assert restored.entries()[1].tolist() == queue.entries()[1].tolist()


def test_a_different_embedding_size_is_refused() -> None:
    queue = MemoryQueue(InfoNCELoss(), size=4)
    queue.enqueue(torch.randn(2, 3), torch.arange(2))
    with pytest.raises(ConfigError, match="3-d embeddings"):
        queue.enqueue(torch.randn(2, 5), torch.arange(2))


def test_gradients_finite_on_adversarial_inputs() -> None:
    ids = torch.arange(8)
    for temperature in (1e-4, 1e4):
        queue = MemoryQueue(InfoNCELoss(temperature=temperature), size=8)
        queue.enqueue(torch.zeros(4, 8), torch.arange(100, 104))  # zero vectors stay zero when normalised
        queue.enqueue(torch.ones(4, 8), torch.arange(200, 204))
        for anchors, candidates in [(torch.zeros(4, 8), torch.ones(4, 8)), (torch.ones(4, 8), torch.ones(4, 8))]:
            anchors.requires_grad_()
            candidates.requires_grad_()
            value = queue(EmbeddedBatch(anchors, candidates, ids[:4], ids[4:]))
            value.backward()
            assert torch.isfinite(value)
            assert torch.isfinite(anchors.grad).all() and torch.isfinite(candidates.grad).all()


@pytest.mark.parametrize("params,match", [
    ({"queue_size": 0}, "queue_size"), ({"queue_size": 2.5}, "queue_size"),
    ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
])
def test_bad_settings_are_refused(params, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_loss("infonce-queue", **params)


def test_registered_with_its_parameters() -> None:
    spec = LOSSES.get("infonce-queue")
    params = spec.parameters()
    assert params == {"temperature": 0.05, "queue_size": 1024, "momentum": None, "filters": (),
                      "mask_duplicates": True}
    json.dumps(params)
    plain = build_loss("infonce-queue", queue_size=16, filters=[{"name": "top-k", "k": 4}])
    assert isinstance(plain, MemoryQueue) and plain.size == 16
    assert [type(s) for s in plain.loss.steps] == [MaskDuplicates, TopKHardest]
    momentum = build_loss("infonce-queue", momentum=0.9)
    assert isinstance(momentum, MomentumQueueObjective) and momentum.momentum == 0.9


def test_recipe_loads_and_builds() -> None:
    config = load_config(REPO / "recipes" / "queue.toml")
    spec = LOSSES.get(config.loss.name)
    loss = spec.build(**config.loss.params)
    assert isinstance(loss, MomentumQueueObjective) and loss.queue.size == 256
    assert Kind(config.data.kind) in spec.kinds and (REPO / config.data.path).is_file()


# -- with the tiny model -------------------------------------------------------------------------------------
SENTENCES = [
    "the cat sat on the mat", "a dog runs in the park", "the sun rises in the east",
    "rain falls on the green hills", "she plays the piano every evening", "he reads a book about old ships",
    "the train leaves at noon", "children build a castle of sand", "the cat runs", "a dog sat on the hills",
]


def test_momentum_weights_are_a_moving_average_and_embed_like_the_encoder(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32").eval()
    objective = MomentumQueueObjective(MemoryQueue(InfoNCELoss(), size=8), momentum=0.9)
    batch = collate([Example(anchor=s, positive=s) for s in SENTENCES[:4]], Kind.SENTENCES)
    objective(encoder, batch)
    weights = torch.cat([p.detach().reshape(-1) for p in encoder.parameters()])
    torch.testing.assert_close(objective.momentum_weights, weights, rtol=0, atol=0)  # w_m = w at the first step
    # The queued positives are the momentum copy's embeddings, here the encoder's own (eval mode: no dropout).
    expected = torch.nn.functional.normalize(encoder(batch.positives).detach())
    torch.testing.assert_close(objective.queue.entries()[0], expected, rtol=1e-5, atol=1e-6)

    with torch.no_grad():
        for param in encoder.parameters():
            param.add_(1.0)
    objective(encoder, collate([Example(anchor=s, positive=s) for s in SENTENCES[4:8]], Kind.SENTENCES))
    torch.testing.assert_close(objective.momentum_weights, weights + 0.1, rtol=1e-6, atol=1e-6)


def _fit_and_crash(tiny_model_path, loss, output_dir, crash_at: int | None) -> tuple:
    class Crash(Exception):
        pass

    def crash(step: int, metrics: dict) -> None:
        if step == crash_at:
            raise Crash

    torch.manual_seed(0)  # the MLP head is initialised from the global RNG
    encoder = load_encoder(tiny_model_path, precision="fp32", mlp_head=True)
    rows = [Example(anchor=s, positive=s) for s in SENTENCES]
    settings = FitSettings(output_dir=output_dir, batch_size=3, max_steps=5, save_steps=2, log_steps=1, lr=1e-3,
                           show_progress=False, seed=3)
    try:
        fit(encoder, rows, loss, settings, kind="sentences", callbacks=[crash])
    except Crash:
        return None, None
    return encoder, loss


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_fit_resumes_the_queue_and_the_momentum_weights(tiny_model_path, tmp_path, momentum) -> None:
    def make():
        return build_loss("infonce-queue", queue_size=7, momentum=momentum)

    straight_encoder, straight = _fit_and_crash(tiny_model_path, make(), tmp_path / "straight", None)
    _fit_and_crash(tiny_model_path, make(), tmp_path / "resumed", crash_at=3)  # after the checkpoint of step 2
    resumed_encoder, resumed = _fit_and_crash(tiny_model_path, make(), tmp_path / "resumed", None)
    expected, actual = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    for (name, mine), theirs in zip(resumed_encoder.state_dict().items(), straight_encoder.state_dict().values()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=name)
    queue = straight if momentum is None else straight.queue
    assert int(queue.count) == 7
    losses = [json.loads(line)["loss"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
              if "loss" in line]
    assert len(losses) == 5 and all(math.isfinite(value) for value in losses)


def test_a_momentum_checkpoint_of_another_model_is_refused(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    objective = MomentumQueueObjective(MemoryQueue(InfoNCELoss(), size=4), momentum=0.5)
    objective.load_state_dict({**objective.state_dict(), "momentum_weights": torch.zeros(10)})
    batch = collate([Example(anchor=s, positive=s) for s in SENTENCES[:3]], Kind.SENTENCES)
    with pytest.raises(ConfigError, match="another model"):
        objective(encoder, batch)


def test_embed_batch_and_queue_work_as_a_plain_embedding_loss(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    queue = build_loss("infonce-queue", queue_size=4)
    batch = collate([Example(anchor=s, positive=s) for s in SENTENCES[:3]], Kind.SENTENCES)
    value = queue(embed_batch(encoder, batch))
    value.backward()
    assert math.isfinite(value.item()) and queue.entries()[1].tolist() == batch.candidate_groups.tolist()
