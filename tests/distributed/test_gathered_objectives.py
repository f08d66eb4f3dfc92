"""DCLR, DiffCSE and reward-bt under 2 and 3 gloo processes train as one process on the concatenated batch.

Each rank runs one training step of each objective on its share of the batch, with the tiny encoder (no dropout,
so only round-off may differ), and averages its gradients over ranks as ``fit`` does. The mean of the ranks'
losses must equal one process's loss on the whole batch, and every rank's gradients (of the encoder's weights and
of the objective's own) and batch-norm statistics must equal that process's. DiffCSE with the unigram generator,
whose replacements depend on the whole batch's words, refuses to run under torchrun instead.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from ranks import run_on_ranks
from torch import Tensor

from embedkit import distributed
from embedkit.data.collate import collate
from embedkit.encoders import Encoder, build_tiny_model, load_encoder
from embedkit.encoders.generators import TokenGenerator, special_token_mask
from embedkit.errors import ConfigError
from embedkit.losses import build_loss
from embedkit.losses.diffcse import maskable_positions
from embedkit.losses.objective import Objective
from embedkit.types import Example, Kind

B = 3  # rows per rank
WORLDS = (2, 3)

# Rank by rank; the blocks differ in length, so the ranks hold different numbers of tokens, and rank 1 repeats a
# text of rank 0, which must be masked across ranks.
SENTENCES = [
    "the cat sat", "a dog runs", "rain falls",
    "a dog runs", "she plays the piano every evening at home", "he reads a long book about the old ships",
    "the train leaves at noon", "children build a castle", "the sun rises in the east",
]
PREFERENCES = [  # prompt, chosen, rejected, margin
    ("\n\nHuman: where is the cat?\n\nAssistant:", " the cat sat on the mat", " a dog runs", 0.0),
    ("\n\nHuman: what does she play?\n\nAssistant:", " she plays the piano", " the train leaves", 0.5),
    ("\n\nHuman: when does the train leave?\n\nAssistant:", " the train leaves at noon", " rain falls", 1.0),
    ("\n\nHuman: what do children build?\n\nAssistant:", " a castle of sand", " the sun rises", 0.2),
    ("\n\nHuman: what does he read?\n\nAssistant:", " a book about old ships", " the cat sat", 0.0),
    ("\n\nHuman: where does the sun rise?\n\nAssistant:", " in the east", " on the green hills", 0.7),
    ("\n\nHuman: what falls?\n\nAssistant:", " rain falls on the hills", " a dog", 0.3),
    ("\n\nHuman: who runs?\n\nAssistant:", " a dog runs in the park", " she plays", 0.0),
    ("\n\nHuman: where did the cat sit?\n\nAssistant:", " on the mat", " at noon", 0.4),
]
SEED = 7


class NextTokenAtOddPositions(TokenGenerator):
    """A deterministic generator, so that one process and the ranks make the same edits whatever their random
    masks: every word at an odd position becomes the next token id (a masked LM edits each sentence on its own
    too, but from random draws that depend on the padded batch shape)."""

    def bind(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def propose(self, input_ids: Tensor, attention_mask: Tensor, masked: Tensor) -> Tensor:
        words = maskable_positions(input_ids, attention_mask, special_token_mask(input_ids, self.tokenizer))
        odd = torch.arange(input_ids.shape[1], device=input_ids.device) % 2 == 1
        return torch.where(words & odd, (input_ids + 1) % len(self.tokenizer), input_ids)


def dclr(encoder: Encoder) -> Objective:
    # phi 0.9 drops about half of the tiny model's in-batch negatives; a large ascent step makes the noise matter.
    return build_loss("dclr", temperature=0.1, phi=0.9, noise_steps=2, noise_lr=0.5)


def diffcse(encoder: Encoder) -> Objective:
    objective = build_loss("diffcse", generator="unigram", lambda_weight=1.0, temperature=0.1)
    objective.generator = NextTokenAtOddPositions()  # before setup, which binds it
    return objective


def reward(contrastive_weight: float) -> Callable[[Encoder], Objective]:
    # Sized at construction, from each process's own generator: setup must give every rank rank 0's head.
    return lambda encoder: build_loss(
        "reward-bt", margin=0.2, contrastive_weight=contrastive_weight, temperature=0.1, dim=encoder.dim
    )


# name -> (data kind, builder); Bradley-Terry alone checks that its per-row mean needs no gathering.
CASES: dict[str, tuple[Kind, Callable[[Encoder], Objective]]] = {
    "dclr": (Kind.SENTENCES, dclr),
    "diffcse": (Kind.SENTENCES, diffcse),
    "reward-bt": (Kind.PREFERENCE, reward(0.5)),
    "bradley-terry": (Kind.PREFERENCE, reward(0.0)),
}


def rows(kind: Kind, first: int, count: int) -> list[Example]:
    if kind == Kind.SENTENCES:
        return [Example(anchor=s, positive=s) for s in SENTENCES[first : first + count]]
    return [Example(anchor=p, positive=c, negatives=(r,), score=m) for p, c, r, m in PREFERENCES[first : first + count]]


def step(case: str, model: str, examples: list[Example], rank: int) -> dict[str, Tensor]:
    """One training step of ``case`` on ``examples``: its loss, the gradient of every trainable weight averaged over
    ranks as ``fit`` averages it (absent gradients as zeros, as the average fills them), and the objective's float
    buffers."""
    kind, build = CASES[case]
    # Seeded by rank, as fit seeds ranks: each draws its own reward head and DCLR noise, and must use rank 0's,
    # which are the single process's.
    torch.manual_seed(SEED + rank)
    encoder = load_encoder(model, precision="fp32").train()
    objective = build(encoder)
    objective.setup(encoder)
    value = objective.train()(encoder, collate(examples, kind))
    value.backward()
    named = [*encoder.named_parameters(), *objective.named_parameters(prefix="objective")]
    trainable = [(name, p) for name, p in named if p.requires_grad]
    distributed.average_gradients([p for _, p in trainable])
    gradients = {name: torch.zeros_like(p) if p.grad is None else p.grad for name, p in trainable}
    buffers = {f"buffer {name}": b for name, b in objective.named_buffers() if b.is_floating_point()}
    return {"loss": value.detach(), **gradients, **buffers}


def worker(rank: int, world: int, model: str) -> dict[str, dict[str, Tensor]]:
    return {case: step(case, model, rows(kind, rank * B, B), rank) for case, (kind, _) in CASES.items()}


def single_process(world: int, model: str) -> dict[str, dict[str, Tensor]]:
    return {case: step(case, model, rows(kind, 0, world * B), rank=0) for case, (kind, _) in CASES.items()}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    texts = [*SENTENCES, *(" ".join(row[:3]) for row in PREFERENCES)]
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts, seed=5, dropout=0.0))


@pytest.fixture(scope="module")
def gathered(tmp_path_factory: pytest.TempPathFactory, model: str) -> dict[int, list[dict[str, dict[str, Tensor]]]]:
    """Every rank's steps for each world size, from one set of processes."""
    return run_on_ranks(worker, WORLDS, tmp_path_factory.mktemp("ranks"), model)


@pytest.mark.parametrize("world", WORLDS)
def test_gathered_objectives_equal_one_process(gathered: dict, model: str, world: int) -> None:
    ranks = gathered[world]
    for case, reference in single_process(world, model).items():
        losses = torch.stack([result[case]["loss"] for result in ranks])
        assert losses.mean().item() == pytest.approx(reference["loss"].item(), rel=1e-5), case
        for rank, result in enumerate(ranks):
            assert result[case].keys() == reference.keys()
            for name in reference.keys() - {"loss"}:
                where = f"{case}, rank {rank}, {name}"
                torch.testing.assert_close(result[case][name], reference[name], rtol=1e-4, atol=1e-6,
                                           msg=lambda message, where=where: f"{where}: {message}")


def test_the_unigram_generator_refuses_torchrun(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = load_encoder(model, precision="fp32")
    objective = build_loss("diffcse", generator="unigram")
    objective.setup(encoder)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ConfigError, match="unigram generator .* not the whole batch"):
        objective(encoder, collate(rows(Kind.SENTENCES, 0, B), Kind.SENTENCES))
