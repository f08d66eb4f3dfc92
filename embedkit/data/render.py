"""Rendering ``(prompt, response)`` into one encoder input that fits the model's maximum length.

A reward model reads the prompt and the response together, but hh-rlhf style prompts are multi-turn
transcripts that often run past an encoder's 128 to 512 tokens, while the response is what is being judged.
So the rule is:

1. the response is kept whole; only when it alone exceeds the budget is it cut, from the right;
2. the prompt fills the tokens left over and is cut from the LEFT, keeping the most recent turns (the
   question the response answers), and is otherwise kept intact, turn markers and all;
3. cuts fall on word boundaries (the tokenizer's own word ids), so no word is split into a fragment that
   tokenizes differently; a single word longer than the budget is the one case cut inside a word;
4. the two parts are joined as they are when either side of the seam is whitespace (hh-rlhf replies start
   with a space after ``"Assistant:"``), else with one space, so that the last prompt word and the first
   response word never fuse.

The budget is ``max_length`` minus the special tokens the tokenizer adds (``[CLS]``/``[SEP]`` for BERT), and the
rendered text is re-tokenized to check it: the encoder's own right-truncation never has to cut it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from embedkit.errors import ConfigError
from embedkit.types import TextEncoder

if TYPE_CHECKING:
    from transformers import BatchEncoding


class Tokenizer(Protocol):
    """What rendering needs of a (fast) Hugging Face tokenizer."""

    is_fast: bool

    def __call__(self, text: str | list[str], **kwargs: bool) -> BatchEncoding: ...

    def num_special_tokens_to_add(self, pair: bool = False) -> int: ...


def render_pair(tokenizer: Tokenizer, prompt: str, response: str, max_length: int) -> str:
    """``prompt`` and ``response`` as one text of at most ``max_length`` tokens (special tokens included).

    Args:
        tokenizer: the encoder's fast tokenizer (offsets and word ids are needed to cut at word boundaries).
        prompt: the conversation so far, e.g. ``"\\n\\nHuman: ...\\n\\nAssistant:"``; cut from the left if needed.
        response: the reply being judged; kept whole unless it alone exceeds the budget.
        max_length: the encoder's maximum sequence length (``encoder.max_seq_length``).

    Returns:
        The rendered text: a suffix of ``prompt``, the seam, and a prefix of ``response`` (the whole of it
        whenever it fits).

    Raises:
        ConfigError: the tokenizer is not a fast tokenizer, or ``max_length`` leaves no room for any token.

    Example:
        >>> prompt = "\\n\\nHuman: Where is Paris?\\n\\nAssistant: In France.\\n\\nHuman: And Rome?\\n\\nAssistant:"
        >>> render_pair(minilm_tokenizer, prompt, " In Italy.", max_length=12)  # 10 tokens + [CLS], [SEP]
        'Human: And Rome?\\n\\nAssistant: In Italy.'
    """
    return render_pairs(tokenizer, [prompt], [response], max_length)[0]


def render_pairs(
    tokenizer: Tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> list[str]:
    """:func:`render_pair` of each ``(prompts[i], responses[i])``; tokenizes all texts in one batch call."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("rendering needs a fast (Rust-backed) tokenizer for token offsets and word ids")
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise ConfigError(f"max_length {max_length} leaves no room for text after the special tokens")
    if not prompts:
        return []
    encoded = _encode(tokenizer, [*prompts, *responses])
    n = len(prompts)
    rendered = []
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        prompt_tokens, response_tokens = encoded[i], encoded[n + i]
        kept_response = _fit_head(tokenizer, response, response_tokens, budget)
        room = budget - _count(tokenizer, kept_response)
        rendered.append(_fit_with_prompt(tokenizer, prompt, prompt_tokens, kept_response, room, budget))
    return rendered


def tokenizer_of(encoder: TextEncoder) -> Tokenizer:
    """The tokenizer of an embedkit encoder (``encoder.model.tokenizer``) or of one that has ``.tokenizer``."""
    tokenizer = getattr(encoder, "tokenizer", None) or getattr(getattr(encoder, "model", None), "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"{type(encoder).__name__} exposes no tokenizer to render (prompt, response) pairs with")
    return tokenizer


def render_for(encoder: TextEncoder, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """:func:`render_pairs` with ``encoder``'s tokenizer and ``max_seq_length``: the encoder's input texts."""
    return render_pairs(tokenizer_of(encoder), prompts, responses, encoder.max_seq_length)


def truncate_left(tokenizer: Tokenizer, text: str, max_length: int) -> str:
    """The longest suffix of ``text`` (cut at a word boundary) within ``max_length`` tokens: keeps the latest turns."""
    return render_pair(tokenizer, text, "", max_length)


class _Tokens:
    """Character offsets and word ids of one tokenized text (special tokens excluded)."""

    def __init__(self, offsets: list[tuple[int, int]], word_ids: list[int | None]) -> None:
        self.offsets = offsets
        self.word_ids = word_ids

    def __len__(self) -> int:
        return len(self.offsets)

    def word_start(self, index: int) -> bool:
        """True when token ``index`` begins a word (so the text may be cut just before it)."""
        return index == 0 or self.word_ids[index] is None or self.word_ids[index] != self.word_ids[index - 1]


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[_Tokens]:
    # verbose=False: long prompts are expected here, the "longer than the maximum" warning is noise
    batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [_Tokens(list(map(tuple, batch["offset_mapping"][i])), batch.word_ids(i)) for i in range(len(texts))]


def _count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _fit_head(tokenizer: Tokenizer, text: str, tokens: _Tokens, budget: int) -> str:
    """The longest prefix of ``text`` within ``budget`` tokens, cut at a word boundary where there is one."""
    keep = budget
    while keep < len(tokens):
        cut = keep  # the prefix ends before the word that the first dropped token belongs to ...
        while cut > 0 and not tokens.word_start(cut):
            cut -= 1
        head = text[: tokens.offsets[(cut or keep) - 1][1]]  # ... unless that one word is longer than `keep`
        excess = _count(tokenizer, head) - budget
        if excess <= 0:
            return head
        keep -= excess  # a cut word can tokenize into more pieces than it had inside the text
        if keep <= 0:
            return ""
    return text


def _join(prompt: str, response: str) -> str:
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return prompt + " " + response


def _fit_with_prompt(
    tokenizer: Tokenizer, prompt: str, tokens: _Tokens, response: str, room: int, budget: int
) -> str:
    """``suffix(prompt) + response`` with as many of the prompt's last words as fit into ``room`` tokens."""
    keep = min(room, len(tokens))
    while keep > 0:
        if keep == len(tokens):
            tail = prompt  # the whole prompt, leading whitespace included
        else:
            start = len(tokens) - keep
            while start < len(tokens) and not tokens.word_start(start):
                start += 1  # drop the fragment of a word cut in two
            tail = prompt[tokens.offsets[start][0] :] if start < len(tokens) else ""
        text = _join(tail, response)
        excess = _count(tokenizer, text) - budget
        if excess <= 0:
            return text
        keep -= excess  # the seam can merge or split tokens: drop that many more prompt tokens and retry
    return response
