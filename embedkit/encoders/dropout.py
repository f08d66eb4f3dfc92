"""Dropout with cheaper masks on the CPU, swapped in for a model's ``nn.Dropout`` layers.

torch draws a CPU dropout mask one element at a time (a Bernoulli draw per element from its Mersenne Twister, on
one thread): 6 ms for a ``[64, 32, 384]`` bf16 activation, 16% of a training step of all-MiniLM-L6-v2 at batch 32
and length 32 on 2 cores. Here each draw of 64 random bits from the same generator gives four 16-bit uniform
numbers, and an element is kept where its number lies above the drop threshold: the mask, applied forward and
backward, costs under half of torch's dropout. The masks come from torch's default generator, so
``torch.manual_seed`` and a checkpoint's saved RNG state reproduce them, as with ``nn.Dropout``.

Attention dropout is not a layer: transformers passes its probability to ``F.scaled_dot_product_attention``,
which then takes its unfused path and torch's masks (another 6% of that step). Models that take their attention
from transformers' ``AttentionInterface`` (BERT and MiniLM in transformers 5, for instance) are switched to
:func:`attention`: the same scaled dot-product attention, with the probabilities dropped by :func:`fast_dropout`
where it applies, and ``sdpa_attention_forward`` itself everywhere else (eval mode, other devices, causal or
grouped-query attention, extra arguments such as a position bias). The same function attends within each text of a
packed batch (:mod:`embedkit.encoders.packing`).

The drop probability is rounded to a multiple of 1/65536 (0.1 becomes 0.1000061), and kept elements are scaled by
one over the rounded keep probability, so that the layer's output keeps the input's expectation exactly. No
library offers this: torch's own generator has no faster CPU mask.

On other devices, in eval mode, for ``p`` of 0 or 1, and for in-place dropout, the layer is ``nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from embedkit.encoders.packing import PACKED, PackedLayout

ATTENTION = "embedkit_sdpa"  # the name under which transformers finds :func:`attention`
LEVELS = 1 << 16  # one mask element per 16 random bits
_INT16_MIN = -(1 << 15)


def drop_count(p: float) -> int:
    """How many of the 65,536 equally likely 16-bit values drop an element: ``p`` rounded to a multiple of 1/65536."""
    return round(p * LEVELS)


def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> Tensor:
    """A bool tensor of ``shape``: each element True (kept) with probability ``1 - drop_count(p) / 65536``.

    Every 16 bits of one draw of 64 random bits decide one element.
    """
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    # [-2**63, 2**63 - 1): all 64 bits uniform but for one of the 2**64 values, which no mask can notice
    words.random_(-(1 << 63), (1 << 63) - 1)
    halves = words.view(torch.int16)[:count].view(shape)
    return halves >= _INT16_MIN + drop_count(p)


def fast_dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode dropout of ``x`` (any shape) with a mask from :func:`keep_mask`; the same shape and dtype."""
    kept = 1.0 - drop_count(p) / LEVELS
    return torch.where(keep_mask(x.shape, p, x.device), x, 0.0) * (1.0 / kept)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from :func:`keep_mask` (see the module's docstring)."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.inplace or input.device.type != "cpu" or drop_count(self.p) in (0, LEVELS):
            return super().forward(input)
        return fast_dropout(input, self.p)


def attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[Tensor, None]:
    """transformers' SDPA attention, with the attention probabilities dropped by :func:`fast_dropout` on the CPU.

    ``query``, ``key``, ``value``: ``[B, H, L, D]``; ``attention_mask``: ``None`` or ``[B, 1, L, L]`` (or
    ``[B, 1, 1, L]``), bool (True: attend) or additive. Returns ``[B, L, H, D]`` and no weights, as
    ``sdpa_attention_forward`` does, which it calls unless dropout applies to a plain bidirectional attention with no
    arguments beyond these.

    With a :class:`~embedkit.encoders.packing.PackedLayout` under ``kwargs[PACKED]``, the inputs are one packed
    row, ``[1, H, N, D]``, and so is the output, ``[1, N, H, D]``: each token attends to its own text's tokens, the
    mask built from the layout (``attention_mask`` and the other arguments, such as position ids, are the padded
    model's business and not read).
    """
    layout: PackedLayout | None = kwargs.pop(PACKED, None)  # type: ignore[assignment]
    if layout is not None:
        padded = [layout.pad_heads(tensor) for tensor in (query, key, value)]
        output, _ = attention(module, *padded, layout.key_mask(), dropout=dropout, scaling=scaling)
        return layout.pack_heads(output), None
    plain = (
        dropout > 0.0
        and query.device.type == "cpu"
        and not getattr(module, "is_causal", False)
        and getattr(module, "num_key_value_groups", 1) == 1
        and all(argument is None for argument in kwargs.values())
    )
    if not plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = 1.0 / math.sqrt(query.shape[-1]) if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probabilities = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same masks as for "sdpa"


def use_fast_dropout(model: nn.Module) -> int:
    """Give ``model`` (in place) :class:`FastDropout` layers and, where it runs transformers' SDPA, :func:`attention`.

    Every ``nn.Dropout`` layer becomes a :class:`FastDropout` of the same ``p``; every transformers model inside
    that uses ``"sdpa"`` and can switch its attention switches to :func:`attention`. The weights, the saved
    folder (whose config names no attention) and the eval-mode outputs do not change. Returns how many dropout
    layers and attention models were switched.
    """
    switched = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                fast = FastDropout(child.p, child.inplace)
                fast.train(child.training)
                setattr(parent, name, fast)
                switched += 1
        if (
            isinstance(parent, PreTrainedModel)
            and parent.config._attn_implementation == "sdpa"
            and parent._can_set_attn_implementation()
        ):
            parent.set_attn_implementation(ATTENTION)
            switched += 1
    return switched
