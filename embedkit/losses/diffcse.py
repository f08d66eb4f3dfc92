"""DiffCSE (Chuang et al., 2022): SimCSE's InfoNCE plus conditional replaced-token detection (RTD).

For a batch of ``B`` sentences the encoder embeds ``N = B + C`` texts (anchors, then candidates: for the
sentences kind the same ``B`` sentences again, a second dropout view), optionally through a batch-norm
projector, giving ``h`` ``[N, D]``. Then:

    L = InfoNCE(h_anchors, h_candidates) + lambda * RTD

    RTD = mean over the real (non-padding) tokens t of every text n of
          BCE( D(x''_n, h_n)_t , [x''_n,t != x_n,t] )

where ``x''_n`` is text ``n`` with about ``mask_ratio`` of its tokens masked and refilled by a frozen generator
(:mod:`embedkit.encoders.generators`) and ``D`` is the discriminator: a copy of the encoder's transformer whose
first input position carries the sentence embedding ``h_n`` in place of the [CLS] token embedding, followed by a
linear layer giving one logit per token. ``h_n`` keeps its gradient, so RTD trains the encoder to put into
``h`` what tells the edited sentence apart from the original: the "difference" of the paper's title.

Checked against the official code (voidism/DiffCSE, ``diffcse/models.py`` and ``train.py``):

- the discriminator is a transformer of the encoder's architecture initialised from the same pretrained
  weights, the condition replaces the embedding output at position 0, the head is linear (official: 2-way
  softmax over ``Linear(hidden, 2)``, the same model as one logit with a sigmoid);
- the batch-norm projector (``--batchnorm``: ``Linear(D, 2D) BN ReLU Linear(2D, D) BN`` without affine) takes
  the place of SimCSE's MLP head: its output is both the InfoNCE embedding and the RTD condition, and it is
  used in training only (``--mlp_only_train``);
- masking: each non-special token with probability ``mask_ratio``; the generator sees BERT's 80/10/10
  corruption and the replacement is its argmax (the official code does not sample);
- both dropout views are edited independently and each is conditioned on its own embedding.

Where this implementation differs, and why: the BCE averages over real tokens only (the official loss also
counts padding positions, which are trivially "not replaced" and dilute the loss as batches pad more); only
masked positions change (the official code copies the generator's prediction everywhere); position 0 is never
masked, since its input is replaced by the condition anyway.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit import distributed
from embedkit.encoders.batching import embedded_from
from embedkit.encoders.generators import TokenGenerator, UnigramGenerator, load_generator, special_token_mask
from embedkit.encoders.heads import read_head, write_head
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.losses.infonce import InfoNCELoss
from embedkit.losses.objective import Objective
from embedkit.losses.registry import LOSSES, LossSpec
from embedkit.types import Kind, TextBatch

if TYPE_CHECKING:
    from embedkit.encoders import Encoder

DIFFCSE_HEAD = "diffcse"
HEAD_MODULES = ("discriminator", "projector", "rtd_head")
HEADS_SEED = 0


def maskable_positions(input_ids: Tensor, attention_mask: Tensor, special: Tensor) -> Tensor:
    """``[N, L]`` bool: real, non-special tokens after position 0 (which carries the condition).

    Args:
        input_ids: ``[N, L]`` token ids.
        attention_mask: ``[N, L]``, 0 at padding.
        special: ``[N, L]`` bool, special tokens.
    """
    maskable = attention_mask.bool() & ~special
    maskable[:, 0] = False
    return maskable


def replacement_mask(maskable: Tensor, ratio: float) -> Tensor:
    """``[N, L]`` bool: each maskable position independently with probability ``ratio`` (a Bernoulli draw)."""
    return maskable & (torch.rand(maskable.shape, device=maskable.device) < ratio)


def rtd_loss(logits: Tensor, replaced: Tensor, attention_mask: Tensor) -> Tensor:
    """Binary cross-entropy of replaced-token detection, averaged over real tokens. Returns a scalar.

    Args:
        logits: ``[N, L]`` discriminator logits (positive: "replaced").
        replaced: ``[N, L]`` bool, whether the token differs from the original.
        attention_mask: ``[N, L]``, 0 at padding (left out).
    """
    real = attention_mask.bool()
    return F.binary_cross_entropy_with_logits(logits.float()[real], replaced.float()[real])


def whole_batch_weight(count: int) -> float:
    """``W * count / total``: the factor that turns this rank's mean over its ``count`` items into its part of the
    mean over the ``total`` items of all ``W`` ranks (``1`` in one process).

    Each rank's loss ``W * sum_r / total`` then averages over ranks to ``sum / total``, and so do the gradients
    once ``fit`` averages them: one process's mean over the whole batch, however unevenly the items fall.
    """
    counts = distributed.gather_objects(count)
    return len(counts) * count / sum(counts)


class BatchNormProjector(nn.Module):
    """DiffCSE's projector ``[n, D] -> [n, D]``: ``Linear(D, 2D) BN ReLU Linear(2D, D) BN`` (last BN without affine).

    The official DiffCSE setting (``--batchnorm``) in place of SimCSE's tanh MLP; the running statistics are
    buffers, so they are checkpointed with the objective.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, 2 * dim, bias=False),
            nn.BatchNorm1d(2 * dim),
            nn.ReLU(),
            nn.Linear(2 * dim, dim, bias=False),
            nn.BatchNorm1d(dim, affine=False),
        )

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.net(embeddings)


class DiffCSEObjective(Objective):
    """DiffCSE: unsupervised SimCSE plus conditional replaced-token detection (see the module docstring).

    Data: sentences (anchor = positive = text, two dropout views). The objective needs the encoder's architecture
    and tokenizer, so :meth:`setup` must run once with the encoder before the optimizer is built; it builds the
    discriminator (a copy of the encoder's transformer), the projector and the RTD head, and checks that the
    generator shares the encoder's vocabulary. These heads are trainable parameters of the objective (optimised
    and checkpointed with the encoder); the generator is frozen. :meth:`save_heads` writes them beside a saved
    model; they never take part in inference.

    Args:
        generator: a masked LM's hub name or folder (the paper's is ``"distilbert-base-uncased"``), or
            ``"unigram"``, the offline fallback (see :mod:`embedkit.encoders.generators`: replacements ignore the
            context, so detection is easier and the signal weaker).
        lambda_weight: weight of the RTD loss (official 0.005); ``0`` is SimCSE (with the projector, if any).
        mask_ratio: probability that a token is masked and refilled (official 0.30).
        temperature: InfoNCE temperature (0.05).
        batchnorm: use the batch-norm projector for the InfoNCE embeddings and the condition (official); load the
            encoder without SimCSE's MLP head then, the projector takes its place.
        sample_replacements: draw the masked LM's replacements from its softmax (ELECTRA) instead of taking its
            most likely token (the official code); the unigram generator always samples.

    Example:
        >>> objective = build_loss("diffcse", generator="unigram")
        >>> objective.setup(encoder)
        >>> fit(encoder, read_examples("wiki.txt", kind="sentences"), objective, FitSettings(lr=7e-6))
        >>> objective.save_heads("runs/diffcse/final")

    Under ``torchrun`` it trains as one process on the concatenated batch: the InfoNCE anchors of each rank meet
    the candidates of every rank (:func:`~embedkit.encoders.batching.embedded_from`), the batch-norm projector
    takes its statistics over every rank's embeddings (:meth:`project`) and the RTD loss is a mean over the tokens
    of the whole batch; a masked-LM generator edits each sentence on its own, so its random masks and edits, like
    dropout masks, follow the same distribution as in one process. The unigram generator refuses to run there with a
    :class:`~embedkit.errors.ConfigError`: its replacement distribution is the word frequencies of the batch it
    sees, which would be each process's share instead of the whole batch.
    """

    def __init__(
        self,
        generator: str = "distilbert-base-uncased",
        lambda_weight: float = 0.005,
        mask_ratio: float = 0.30,
        temperature: float = 0.05,
        batchnorm: bool = True,
        sample_replacements: bool = False,
    ) -> None:
        super().__init__()
        if lambda_weight < 0:
            raise ConfigError(f"lambda_weight must be >= 0, got {lambda_weight}")
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.generator_name = str(generator)
        self.lambda_weight = lambda_weight
        self.mask_ratio = mask_ratio
        self.batchnorm = batchnorm
        self.contrastive = InfoNCELoss(temperature=temperature)
        self.generator: TokenGenerator = load_generator(generator, sample=sample_replacements)
        self.projector: BatchNormProjector | None = None
        self.discriminator: nn.Module | None = None
        self.rtd_head: nn.Linear | None = None
        self.tokenizer = None
        self.ready = False

    # -- building the heads --------------------------------------------------------------------------------
    def setup(self, encoder: Encoder) -> None:
        """Build the heads for ``encoder`` and check the generator against its tokenizer (once; idempotent).

        Raises:
            ConfigError: the generator's vocabulary differs from the encoder's, or the encoder is not a
                BERT-like transformer whose embedding block the condition can enter.
        """
        if self.ready:
            return
        self.tokenizer = encoder.model.tokenizer
        self.generator.bind(self.tokenizer)
        # The heads start from a fixed seed, whatever drew from the global generator before (and without
        # advancing it), so that equal settings give equal runs, also when a run is restarted elsewhere.
        with torch.random.fork_rng():
            torch.manual_seed(HEADS_SEED)
            self._build_heads(encoder)
        self.to(encoder.device)
        self.ready = True

    def _build_heads(self, encoder: Encoder) -> None:
        if self.batchnorm:
            self.projector = BatchNormProjector(encoder.dim)
        if self.lambda_weight > 0:
            transformer = getattr(encoder.model[0], "auto_model", None)
            if not hasattr(transformer, "embeddings"):
                found = type(encoder.model[0] if transformer is None else transformer).__name__
                raise ConfigError(
                    "DiffCSE's discriminator copies the encoder's transformer and puts the sentence embedding in "
                    f"place of its first token embedding; {found} has no `embeddings` block"
                )
            hidden = int(transformer.config.hidden_size)
            if hidden != encoder.dim:
                raise ConfigError(
                    f"the sentence embedding ({encoder.dim} dims) must fit a token slot of the discriminator "
                    f"({hidden} dims); DiffCSE needs an encoder without a dimension-changing layer after pooling"
                )
            # Official: the discriminator starts from the same pretrained weights as the encoder.
            self.discriminator = copy.deepcopy(transformer).requires_grad_(True)
            self.rtd_head = nn.Linear(hidden, 1)

    def train(self, mode: bool = True) -> DiffCSEObjective:
        super().train(mode)
        self.generator.eval()  # frozen: no dropout in the generator, ever
        return self

    # -- the loss ------------------------------------------------------------------------------------------
    def forward(self, encoder: Encoder, batch: TextBatch) -> Tensor:
        if not self.ready:
            raise ConfigError(
                "DiffCSEObjective.setup(encoder) has not run: it builds the discriminator and projector, which "
                "must exist before the optimizer is built"
            )
        self._refuse_rank_local_generator()
        texts = [*batch.anchors, *batch.candidates]
        embeddings = encoder(texts)  # [N, D], one pass so every text gets its own dropout mask
        if self.projector is not None:
            embeddings = self.project(embeddings)
        loss = self.contrastive(embedded_from(embeddings, batch))
        if self.lambda_weight == 0:
            return loss
        return loss + self.lambda_weight * self.replaced_token_detection(encoder, texts, embeddings)

    def _refuse_rank_local_generator(self) -> None:
        if distributed.is_distributed() and isinstance(self.generator, UnigramGenerator):
            raise ConfigError(
                "DiffCSE's unigram generator draws its replacements from the word frequencies of the batch it is "
                "given, which under torchrun is this process's share of the batch, not the whole batch, so it "
                "would train rank-locally; use a masked-LM generator (generator='distilbert-base-uncased' or a "
                "local copy), which edits each sentence on its own, or train in one process"
            )

    def project(self, embeddings: Tensor) -> Tensor:
        """The projector's ``[N, D] -> [N, D]``, its batch norm taking statistics over the whole batch.

        Under ``torchrun`` the projector runs on the embeddings of every rank (gathered with gradients) and this
        rank keeps its own rows: the batch norm then normalises, and updates its running statistics, as one
        process on the whole batch would, and gradients reach every rank's rows through the gather.
        """
        n = embeddings.shape[0]
        first = distributed.rank() * n
        # Batch statistics in float32 whatever the autocast precision; the projector is small.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            projected = self.projector(distributed.gather_with_grad(embeddings.float()))
        return projected[first : first + n]

    def replaced_token_detection(self, encoder: Encoder, texts: list[str], conditions: Tensor) -> Tensor:
        """The RTD loss of ``texts``, each conditioned on its row of ``conditions`` ``[N, D]``. Returns a scalar.

        The BCE is a mean over the real tokens of the whole batch: under ``torchrun`` each rank weights its own
        mean by its share of every rank's tokens (:func:`whole_batch_weight`), since texts differ in length.
        """
        features = encoder.tokenize(texts)
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        maskable = maskable_positions(input_ids, attention_mask, special_token_mask(input_ids, self.tokenizer))
        edited = self.generator.propose(input_ids, attention_mask, replacement_mask(maskable, self.mask_ratio))
        logits = self.discriminate(edited, attention_mask, features.get("token_type_ids"), conditions)
        weight = whole_batch_weight(int(attention_mask.sum()))
        return rtd_loss(logits, edited != input_ids, attention_mask) * weight

    def discriminate(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None, conditions: Tensor
    ) -> Tensor:
        """``[N, L]`` logits that each token was replaced, given the sentence embeddings ``conditions`` ``[N, D]``."""

        def condition_first_position(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            return torch.cat([conditions[:, None].to(output.dtype), output[:, 1:]], dim=1)

        hook = self.discriminator.embeddings.register_forward_hook(condition_first_position)
        try:
            hidden = self.discriminator(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
        finally:
            hook.remove()
        return self.rtd_head(hidden).squeeze(-1).float()

    # -- heads on disk -------------------------------------------------------------------------------------
    def heads_state(self) -> dict[str, Tensor]:
        """The trained heads (discriminator, projector, RTD head) by state-dict name."""
        return {
            name: tensor.detach().cpu().contiguous().clone()
            for name, tensor in self.state_dict().items()
            if name.split(".", 1)[0] in HEAD_MODULES
        }

    def save_heads(self, path: str | os.PathLike[str]) -> Path:
        """Write the heads beside the model in folder ``path``: ``embedkit_heads/diffcse.*``."""
        config = {
            "generator": self.generator_name,
            "lambda_weight": self.lambda_weight,
            "mask_ratio": self.mask_ratio,
            "batchnorm": self.batchnorm,
        }
        return write_head(path, DIFFCSE_HEAD, self.heads_state(), config)

    def load_heads(self, path: str | os.PathLike[str]) -> None:
        """Load heads written by :meth:`save_heads` (after :meth:`setup`, which builds them), e.g. to continue.

        Raises:
            EmbedkitError: ``path`` has no DiffCSE heads, or they do not fit this objective's heads.
        """
        tensors, _ = read_head(path, DIFFCSE_HEAD)
        expected = set(self.heads_state())
        if set(tensors) != expected:
            raise EmbedkitError(
                f"the DiffCSE heads in {path} do not fit this objective (set up for another encoder, or another "
                f"lambda_weight/batchnorm): {len(set(tensors) ^ expected)} tensors differ"
            )
        self.load_state_dict(tensors, strict=False)

    def extra_repr(self) -> str:
        return f"generator={self.generator_name!r}, lambda_weight={self.lambda_weight}, mask_ratio={self.mask_ratio}"


LOSSES.register(
    "diffcse",
    LossSpec(
        name="diffcse",
        factory=DiffCSEObjective,
        summary="DiffCSE: SimCSE InfoNCE + lambda * replaced-token detection conditioned on the sentence embedding",
        kinds=(Kind.SENTENCES,),
        reference="Chuang et al., 2022, DiffCSE: Difference-based Contrastive Learning for Sentence Embeddings",
    ),
)
