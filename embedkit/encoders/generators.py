"""Token generators for replaced-token detection (DiffCSE): what goes where a token was masked.

A generator takes token ids ``[N, L]`` and a mask of the positions to edit and returns the edited ids. Two
kinds, named by a spec string (:func:`load_generator`):

- **a masked language model** (any ``AutoModelForMaskedLM``, by hub name or local folder; DiffCSE uses
  ``distilbert-base-uncased``): frozen, it fills the masked positions with tokens that fit the context, so
  telling them from the original tokens takes an understanding of the sentence;
- **"unigram"**, the offline fallback that needs no weights: each masked position gets a token drawn from the
  unigram distribution of the batch's own tokens (special tokens and padding excluded). The replacements are
  real in-domain words but ignore the context, so they are much easier to spot than a masked LM's: the
  replaced-token-detection signal is weaker and DiffCSE trained this way is expected to gain less over SimCSE
  than the paper reports.

A generator must share the encoder's vocabulary, since token ids pass from one to the other;
:meth:`TokenGenerator.bind` checks that against the encoder's tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from embedkit.encoders.locate import cache_only
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.progress import quiet_library_bars

UNIGRAM = "unigram"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")

# BERT's corruption of the masked positions fed to the generator (kept by the official DiffCSE collator):
# 80% become [MASK], 10% a random token, 10% stay as they are.
MASK_SHARE = 0.8
RANDOM_SHARE = 0.1


def special_token_mask(input_ids: Tensor, tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """``[N, L]`` bool: positions holding one of the tokenizer's special tokens ([CLS], [SEP], [PAD], ...)."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, special)


class TokenGenerator(nn.Module):
    """``propose(input_ids, attention_mask, masked) -> [N, L]`` edited ids; frozen, never trained."""

    def bind(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Check that the generator can serve an encoder with ``tokenizer`` and remember what it needs of it.

        Raises:
            ConfigError: the vocabularies differ.
        """
        raise NotImplementedError

    def propose(self, input_ids: Tensor, attention_mask: Tensor, masked: Tensor) -> Tensor:
        """Replace the tokens at ``masked`` positions.

        Args:
            input_ids: ``[N, L]`` long, the original tokens.
            attention_mask: ``[N, L]``, 1 at real tokens, 0 at padding.
            masked: ``[N, L]`` bool, the positions to fill (never padding or special tokens).

        Returns:
            ``[N, L]`` long: ``input_ids`` with the masked positions refilled. A refilled token may equal the
            original one; it then does not count as replaced.
        """
        raise NotImplementedError


class MaskedLMGenerator(TokenGenerator):
    """A frozen masked language model that fills masked positions from their context.

    As in the official DiffCSE code, the model sees the batch with BERT's 80/10/10 corruption of the masked
    positions and the replacement is its most likely token (``sample=False``); ``sample=True`` draws it from the
    softmax instead, as ELECTRA does, which gives more varied (and more often wrong) replacements. Only the
    masked positions change (the official code also copies the generator's prediction at unmasked positions,
    which for a pretrained MLM is nearly always the input token).

    Args:
        model: a masked LM whose outputs have ``.logits`` of shape ``[N, L, V]``.
        name: its hub name or folder, for messages.
        tokenizer: the tokenizer saved with it, used to check the vocabulary token by token; ``None`` checks the
            vocabulary size only.
        sample: sample replacements instead of taking the argmax.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        name: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        sample: bool = False,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.vocabulary = tokenizer.get_vocab() if tokenizer is not None else None
        self.sample = sample
        self.vocab_size = 0
        self.mask_token_id: int | None = None

    def bind(self, tokenizer: PreTrainedTokenizerBase) -> None:
        size = len(tokenizer)
        if self.vocabulary is not None:
            if self.vocabulary != tokenizer.get_vocab():
                raise ConfigError(
                    f"the generator {self.name!r} has another vocabulary than the encoder ({len(self.vocabulary)} "
                    f"vs {size} tokens, or the same tokens under other ids); DiffCSE's generator must share the "
                    "encoder's vocabulary: pick a masked LM of the encoder's family, or generator='unigram'"
                )
        elif int(self.model.config.vocab_size) != size:
            raise ConfigError(
                f"the generator {self.name!r} has a vocabulary of {self.model.config.vocab_size} tokens, the "
                f"encoder's tokenizer {size}; DiffCSE's generator must share the encoder's vocabulary: pick a "
                "masked LM of the encoder's family, or generator='unigram'"
            )
        if tokenizer.mask_token_id is None:
            raise ConfigError(
                f"the encoder's tokenizer has no mask token, so the generator {self.name!r} cannot be asked to fill "
                "masked positions; use generator='unigram'"
            )
        self.vocab_size = size
        self.mask_token_id = int(tokenizer.mask_token_id)

    @torch.no_grad()
    def propose(self, input_ids: Tensor, attention_mask: Tensor, masked: Tensor) -> Tensor:
        if self.mask_token_id is None:
            raise ConfigError(f"the generator {self.name!r} is not bound to a tokenizer; call bind(tokenizer) first")
        roll = torch.rand(input_ids.shape, device=input_ids.device)
        corrupted = input_ids.masked_fill(masked & (roll < MASK_SHARE), self.mask_token_id)
        random_slots = masked & (roll >= MASK_SHARE) & (roll < MASK_SHARE + RANDOM_SHARE)
        random_tokens = torch.randint(self.vocab_size, input_ids.shape, device=input_ids.device)
        corrupted = torch.where(random_slots, random_tokens, corrupted)
        # Padded output rows of some models go beyond the tokenizer; such ids must never be proposed.
        logits = self.model(input_ids=corrupted, attention_mask=attention_mask).logits[masked, : self.vocab_size]
        if self.sample:
            picked = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1).squeeze(-1)
        else:
            picked = logits.argmax(dim=-1)
        edited = input_ids.clone()
        edited[masked] = picked
        return edited

    def extra_repr(self) -> str:
        return f"name={self.name!r}, sample={self.sample}"


class UnigramGenerator(TokenGenerator):
    """The offline fallback: replacements drawn from the unigram distribution of the batch's tokens.

    Each masked position gets a token sampled (with replacement) in proportion to how often it occurs among the
    batch's non-special, non-padding tokens. No weights, no context: see the module docstring for what that
    changes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: PreTrainedTokenizerBase | None = None

    def bind(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    @torch.no_grad()
    def propose(self, input_ids: Tensor, attention_mask: Tensor, masked: Tensor) -> Tensor:
        if self.tokenizer is None:
            raise ConfigError("the unigram generator is not bound to a tokenizer; call bind(tokenizer) first")
        edited = input_ids.clone()
        count = int(masked.sum())
        if count == 0:
            return edited
        words = attention_mask.bool() & ~special_token_mask(input_ids, self.tokenizer)
        # Masked positions are words, so the counts are never all zero here.
        frequencies = torch.bincount(input_ids[words]).float()
        edited[masked] = torch.multinomial(frequencies, count, replacement=True)
        return edited

    def extra_repr(self) -> str:
        return "unigram of the batch"


def load_generator(spec: str | os.PathLike[str], sample: bool = False) -> TokenGenerator:
    """The generator named by ``spec``: ``"unigram"``, or a masked LM's hub name or local folder.

    Args:
        spec: ``"unigram"`` or a name/path for ``AutoModelForMaskedLM.from_pretrained``.
        sample: for a masked LM, sample replacements instead of taking the most likely token.

    Raises:
        EmbedkitError: a local folder that does not exist, or a model that cannot be loaded.
        ConfigError: the model has no masked-LM head (for instance a sentence-transformers encoder).

    Example:
        >>> generator = load_generator("unigram")
        >>> generator = load_generator("distilbert-base-uncased")  # DiffCSE's, needs the hub or a local copy
    """
    name = str(spec)
    if name == UNIGRAM:
        return UnigramGenerator()
    offline = cache_only(name, "generator model")
    try:
        with quiet_library_bars():
            model, info = AutoModelForMaskedLM.from_pretrained(
                name, output_loading_info=True, local_files_only=offline
            )
    except (OSError, ValueError) as error:
        raise EmbedkitError(
            f"cannot load the generator {name!r} as a masked language model: {str(error).splitlines()[0]}; "
            f"without a masked LM at hand use generator={UNIGRAM!r}"
        ) from error
    if info.get("missing_keys"):
        # Loading an encoder without its LM head leaves a randomly initialised head: a generator of noise.
        raise ConfigError(
            f"{name!r} has no masked-LM head (missing weights: {', '.join(sorted(info['missing_keys'])[:3])}, ...); "
            "the generator must be a masked language model such as distilbert-base-uncased"
        )
    return MaskedLMGenerator(model, name, tokenizer=_saved_tokenizer(name, offline), sample=sample)


def _saved_tokenizer(name: str, offline: bool) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with the model ``name``, or ``None`` (then only the vocabulary size can be checked)."""
    folder = Path(name).expanduser()
    # From a folder without tokenizer files, AutoTokenizer builds an empty one (special tokens only) from the
    # model config, which would fail every comparison: only a saved tokenizer counts.
    if folder.is_dir() and not any((folder / file).is_file() for file in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=offline)
    except (OSError, ValueError):
        return None
