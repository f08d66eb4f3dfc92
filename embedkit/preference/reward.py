"""A reward model on a sentence encoder: a scalar head over pooled ``(prompt, response)`` representations.

Training objective (:class:`RewardModelObjective`, registered as loss ``reward-bt``), for a batch of ``B``
preference rows with rewards ``r_c = head(h(x, y_chosen))`` and ``r_r = head(h(x, y_rejected))`` (``h`` the
pooled representation of the rendered pair, ``head`` a linear layer on it, see :class:`RewardHead`):

    L = mean_i -log sigmoid(r_c,i - r_r,i - m_i)                          (Bradley-Terry, with margin m)
        + contrastive_weight * InfoNCE(h'(x, y_c) | h(x, y_c), negatives) (representation term)

The Bradley-Terry loss is the pairwise ranking loss of reward modelling (Bradley and Terry, 1952; Ouyang et
al., 2022, InstructGPT); the margin ``m`` (Touvron et al., 2023, Llama 2) asks for a larger reward gap where
the preference is strong.

The representation term follows "Secrets of RLHF in Large Language Models Part II: Reward Modeling" (Wang et
al., 2024, arXiv:2401.06080), which adds an unsupervised contrastive loss to the ranking loss so that the
reward model captures what separates chosen from rejected responses instead of over-fitting to noisy labels;
the paper tries SimCSE (instance-level) and SwAV (cluster-level) losses, on single-response representations
and on chosen-minus-rejected difference representations. Our choice is SimCSE on single-response
representations, with supervised SimCSE's hard negative (Gao et al., 2021): each row's rendered
``(prompt, chosen)`` is the anchor, a second dropout view of the same text is its positive, and the candidates
it must out-score are the second views of every other row's chosen text plus every rejected text of the batch,
its own rejected reply being the hardest. Chosen and rejected representations are thus contrasted across the
whole batch, through the same score table, duplicate masking and cross-entropy as every InfoNCE loss here.
The second view costs one more forward pass over the chosen texts (1.5x the encoder work of Bradley-Terry
alone). Representations are the encoder's training path ``encoder(texts)``; the inference path is
:meth:`RewardModel.score`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from embedkit.data.collate import text_ids
from embedkit.encoders.sentence_transformer import HEADS_DIR
from embedkit.errors import ConfigError, DataError, EmbedkitError
from embedkit.fsutil import atomic_directory, atomic_write_bytes
from embedkit.losses.infonce import InfoNCELoss
from embedkit.losses.objective import Objective
from embedkit.losses.registry import LOSSES, LossSpec
from embedkit.preference.render import render_for
from embedkit.types import EmbeddedBatch, Kind, TextBatch

if TYPE_CHECKING:
    from embedkit.encoders import Encoder

REWARD_WEIGHTS = "reward.safetensors"
REWARD_CONFIG = "reward.json"
REWARD_FORMAT = "embedkit-reward-head/1"


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: float | Tensor = 0.0) -> Tensor:
    """Mean ``-log sigmoid(r_c - r_r - m)`` over ``[B]`` rewards; ``margin`` is a float or a ``[B]`` tensor.

    Computed in float32 with ``logsigmoid`` (stable for large gaps). Returns a scalar.
    """
    return -F.logsigmoid(chosen.float() - rejected.float() - margin).mean()


class RewardHead(nn.Module):
    """``[B, D] -> [B]``: the scalar reward ``w . (sqrt(D) h / |h|) + b`` of pooled representations ``h``.

    The representation is rescaled to unit root-mean-square per coordinate (an RMS norm without gain) before
    the linear layer: sentence encoders often L2-normalise their output (all-MiniLM-L6-v2 does), and a
    ``Linear(D, 1)`` over unit vectors starts with rewards within about +-1 that grow only as fast as a
    fine-tuning learning rate lets the weights grow. At unit RMS the standard ``nn.Linear`` initialisation and
    the encoder's learning rate suit the head, and the reward depends on the direction of ``h`` only, as cosine
    similarity does.

    Args:
        dim: the representation size ``D``; ``None`` infers it from the first batch (``nn.LazyLinear``), which
            lets a recipe build the objective before the encoder is known.
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.linear = nn.LazyLinear(1) if dim is None else nn.Linear(dim, 1)

    @property
    def dim(self) -> int:
        return int(self.linear.in_features)

    def forward(self, representations: Tensor) -> Tensor:
        h = representations.float()
        return self.linear(F.normalize(h, dim=-1) * math.sqrt(h.shape[-1])).squeeze(-1)


class RewardModelObjective(Objective):
    """Bradley-Terry reward modelling with an optional contrastive representation term (see the module doc).

    Data: preference rows (anchor = prompt, positive = chosen, one negative = rejected). Each pair is
    rendered with :func:`embedkit.preference.render_pair` (prompt cut from the left to fit the encoder's
    ``max_seq_length``). A row's ``score``, when the batch carries scores, is that row's margin; otherwise
    every row uses ``margin``.

    Args:
        margin: constant reward margin ``m`` (``0``: plain Bradley-Terry).
        contrastive_weight: weight of the InfoNCE representation term (``0``: Bradley-Terry alone, no extra
            forward pass).
        temperature: temperature of the InfoNCE term.
        dim: representation size; ``None`` infers it at the first batch.

    Example:
        >>> objective = build_loss("reward-bt", contrastive_weight=0.1)
        >>> fit(encoder, read_examples("prefs.jsonl"), objective, FitSettings(output_dir="runs/rm"))
        >>> model = load_reward_model("runs/rm/final")  # fit saves the head beside the encoder
    """

    def __init__(
        self,
        margin: float = 0.0,
        contrastive_weight: float = 0.0,
        temperature: float = 0.05,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if contrastive_weight < 0:
            raise ConfigError(f"contrastive_weight must be >= 0, got {contrastive_weight}")
        self.margin = margin
        self.contrastive_weight = contrastive_weight
        self.head = RewardHead(dim)
        self.contrastive = InfoNCELoss(temperature=temperature)

    def forward(self, encoder: Encoder, batch: TextBatch) -> Tensor:
        if batch.kind != Kind.PREFERENCE or len(batch.negatives) != 1:
            raise DataError(
                f"reward-bt needs preference rows (prompt, chosen, one rejected), got {batch.kind.value} rows "
                f"with {len(batch.negatives)} negatives"
            )
        b = len(batch)
        chosen = render_for(encoder, batch.anchors, batch.positives)
        rejected = render_for(encoder, batch.anchors, batch.negatives[0])
        representations = encoder([*chosen, *rejected])  # [2B, D]: one pass, each text its own dropout mask
        rewards = self.head(representations)
        margin = self.margin if batch.scores is None else batch.scores.to(rewards.device)
        loss = bradley_terry_loss(rewards[:b], rewards[b:], margin)
        if self.contrastive_weight > 0:
            second_view = encoder(chosen)  # [B, D]
            views = EmbeddedBatch(
                anchors=representations[:b],
                candidates=torch.cat([second_view, representations[b:]]),
                anchor_groups=text_ids(chosen).to(rewards.device),
                candidate_groups=text_ids([*chosen, *rejected]).to(rewards.device),
            )
            loss = loss + self.contrastive_weight * self.contrastive(views)
        return loss

    def save_heads(self, path: str | os.PathLike[str]) -> Path:
        """Write the reward head beside the model in folder ``path``: ``embedkit_heads/reward.*``."""
        return write_reward_head(self.head, Path(path))

    def extra_repr(self) -> str:
        return f"margin={self.margin}, contrastive_weight={self.contrastive_weight}"


def write_reward_head(head: RewardHead, folder: Path) -> Path:
    """``folder/embedkit_heads/reward.safetensors`` and ``reward.json`` (format and ``dim``), each atomically.

    Returns the ``embedkit_heads`` folder.
    """
    heads = folder / HEADS_DIR
    heads.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().float().contiguous().cpu() for name, tensor in head.state_dict().items()}
    atomic_write_bytes(heads / REWARD_WEIGHTS, safetensors_bytes(weights))
    config = {"format": REWARD_FORMAT, "dim": head.dim}
    atomic_write_bytes(heads / REWARD_CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return heads


def has_reward_head(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a local folder holding an embedkit reward head."""
    return (Path(path) / HEADS_DIR / REWARD_CONFIG).is_file()


class RewardModel(nn.Module):
    """An encoder and its reward head: ``score(prompts, responses) -> [n]`` rewards.

    Inputs are rendered like in training (:func:`embedkit.preference.render_pair`), embedded with the encoder's
    inference path (:meth:`Encoder.encode`, no dropout, no MLP head) and scored by the head in float32.
    """

    def __init__(self, encoder: Encoder, head: RewardHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    @property
    def name(self) -> str:
        return self.encoder.name

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Float32 ``[n]`` rewards of ``(prompts[i], responses[i])``."""
        representations = self.encoder.encode(render_for(self.encoder, prompts, responses), batch_size=batch_size)
        device = next(self.head.parameters()).device
        with torch.no_grad():
            rewards = self.head(torch.from_numpy(representations).to(device))
        return rewards.cpu().numpy().astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """A sentence-transformers folder with ``embedkit_heads/reward.*`` beside it, written atomically."""
        with atomic_directory(path) as tmp:
            self.encoder.save(tmp)
            write_reward_head(self.head, tmp)
        return Path(path)


def load_reward_model(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None, precision: str = "auto"
) -> RewardModel:
    """Load a reward model saved by :meth:`RewardModel.save` or by a ``reward-bt`` training run.

    Raises:
        EmbedkitError: ``path`` has no reward head (for instance a plain encoder).
    """
    from embedkit.encoders import load_encoder

    config_file = Path(path) / HEADS_DIR / REWARD_CONFIG
    if not config_file.is_file():
        raise EmbedkitError(
            f"{path} has no reward head ({HEADS_DIR}/{REWARD_CONFIG} is missing): it is not an embedkit reward "
            "model; train one with the loss 'reward-bt', or evaluate the encoder in similarity mode"
        )
    config = json.loads(config_file.read_text())
    if config.get("format") != REWARD_FORMAT:
        raise EmbedkitError(f"{config_file}: unknown reward head format {config.get('format')!r}")
    encoder = load_encoder(path, device=device, precision=precision)
    head = RewardHead(int(config["dim"]))
    head.load_state_dict(load_file(str(Path(path) / HEADS_DIR / REWARD_WEIGHTS)))
    return RewardModel(encoder, head.to(encoder.device)).eval()


LOSSES.register(
    "reward-bt",
    LossSpec(
        name="reward-bt",
        factory=RewardModelObjective,
        summary="reward model: Bradley-Terry on a scalar head (optional margin) + contrastive representation term",
        kinds=(Kind.PREFERENCE,),
        reference="Bradley and Terry, 1952; Wang et al., 2024, Secrets of RLHF in Large Language Models Part II",
    ),
)
