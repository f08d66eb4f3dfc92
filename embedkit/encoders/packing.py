"""Unpadded forward passes on the CPU: a batch's real tokens packed into one row, so that no linear layer, norm,
activation or dropout works on padding.

A training batch is drawn at random, so its texts pad to the longest of them: of all-MiniLM-L6-v2's tokens on wiki
sentences in random batches of 32, 27% are padding at length 32 and 57% at 256. Packed, the
model sees ``[1, N]`` input ids (``N`` the real tokens), position ids that restart at every text, and a
:class:`PackedLayout` that embedkit's attention function (:func:`embedkit.encoders.dropout.attention`) uses to pad
query, key and value back to ``[B, H, L, D]``, attend under the key mask and pack the result again: attention is the
one step that needs the texts apart. The model computes the same function of the same weights (in fp32 the
embeddings equal the padded forward's; tests), and a training step of all-MiniLM-L6-v2 at batch 32 and length 32
ran 1.33x as fast as padded, side by side (``benchmarks/README.md``).

transformers packs sequences through position ids for its flash-attention kernels and causal masks; bidirectional
encoders on a CPU it leaves padded, hence this module. Only BERT models are packed (``model_type == "bert"``, which
all-MiniLM-L6-v2, BGE and E5 are): their embeddings take position ids as given and nothing but attention mixes
tokens. Other architectures (RoBERTa's offset positions, MPNet's relative position bias), models on other devices or
with another attention implementation, and decoders run padded.
"""

from __future__ import annotations

from dataclasses import dataclass

from sentence_transformers import SentenceTransformer
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel

PACKED = "embedkit_packed"  # the keyword argument that brings the attention function a packed batch's layout
PACKED_MODEL_TYPES = frozenset({"bert"})


@dataclass(frozen=True)
class PackedLayout:
    """Where a padded batch's real tokens lie.

    Attributes:
        mask: ``[B, L]`` bool, True at a real token.
        index: ``[N]`` int64, the real tokens' positions in the flattened ``B * L`` batch, in order.
    """

    mask: Tensor
    index: Tensor

    @classmethod
    def of(cls, attention_mask: Tensor) -> PackedLayout:
        """The layout of a tokenizer's ``[B, L]`` attention mask (1 at a real token)."""
        mask = attention_mask.bool()
        return cls(mask=mask, index=mask.flatten().nonzero().squeeze(1))

    def pack(self, padded: Tensor) -> Tensor:
        """``[B, L, ...]`` -> ``[N, ...]``: the real tokens' rows."""
        return padded.flatten(0, 1).index_select(0, self.index)

    def unpack(self, packed: Tensor) -> Tensor:
        """``[N, ...]`` -> ``[B, L, ...]``, zeros at padding."""
        batch, length = self.mask.shape
        rows = packed.new_zeros(batch * length, *packed.shape[1:]).index_copy(0, self.index, packed)
        return rows.view(batch, length, *packed.shape[1:])

    def positions(self) -> Tensor:
        """``[N]``: each real token's position within its text, from 0."""
        return self.pack(self.mask.long().cumsum(1) - 1)

    def pad_heads(self, packed: Tensor) -> Tensor:
        """An attention input ``[1, H, N, D]`` -> ``[B, H, L, D]``, zeros at padding."""
        return self.unpack(packed[0].transpose(0, 1)).transpose(1, 2)

    def pack_heads(self, padded: Tensor) -> Tensor:
        """An attention output ``[B, L, H, D]`` -> ``[1, N, H, D]``."""
        return self.pack(padded).unsqueeze(0)

    def key_mask(self) -> Tensor:
        """``[B, 1, 1, L]`` bool: which keys each query of a text may attend to (its text's real tokens)."""
        return self.mask[:, None, None, :]


def packs_exactly(config: PretrainedConfig) -> bool:
    """Whether a model of ``config`` computes the same function packed: a BERT encoder that returns its last layer
    only (per-layer outputs would come back packed)."""
    return config.model_type in PACKED_MODEL_TYPES and not config.is_decoder and not config.output_hidden_states


def packed_sentence_embeddings(
    model: SentenceTransformer, transformer: PreTrainedModel, features: dict[str, Tensor]
) -> Tensor:
    """``model``'s sentence embeddings ``[B, D]`` of a tokenized batch (``input_ids`` and ``attention_mask``
    ``[B, L]``), with ``transformer``, its first module's model (:func:`packs_exactly`, and an attention function
    that reads :data:`PACKED`), run on the packed tokens and the modules after it (pooling, normalisation) on its
    output padded again."""
    layout = PackedLayout.of(features["attention_mask"])
    inputs = {"input_ids": layout.pack(features["input_ids"])[None], "position_ids": layout.positions()[None]}
    if "token_type_ids" in features:
        inputs["token_type_ids"] = layout.pack(features["token_type_ids"])[None]
    hidden = transformer(**inputs, **{PACKED: layout}).last_hidden_state[0]  # [N, C]
    features = {**features, "token_embeddings": layout.unpack(hidden)}
    for module in list(model)[1:]:
        features = module(features)
    return features["sentence_embedding"]
