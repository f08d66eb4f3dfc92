"""Named prompts (instructions): the text a model puts before a query or a document.

The embedders trained today (E5, BGE, GTE, Nomic, Qwen3-Embedding) expect a prompt before each text and carry
their prompts in sentence-transformers' ``prompts`` dict (``config_sentence_transformers.json``), e.g.
``{"query": "query: ", "document": "passage: "}``. Which prompt a text gets follows sentence-transformers: an
explicit prompt wins, then the prompt ``prompt_name`` names, then the model's prompt for the text's role, picked
as ``SentenceTransformer.encode_query`` and ``encode_document`` pick it.
"""

from __future__ import annotations

from collections.abc import Mapping

from embedkit.errors import ConfigError

QUERY = "query"
DOCUMENT = "document"
ROLE_PROMPT_NAMES: dict[str, tuple[str, ...]] = {QUERY: ("query",), DOCUMENT: ("document", "passage", "corpus")}
"""The prompt names a role's prompt is looked up by, first found wins (sentence-transformers' order)."""


def named_prompt(prompts: Mapping[str, str], name: str) -> str:
    """The prompt called ``name``.

    Raises:
        ConfigError: the model has no prompt of that name; the message lists those it has.
    """
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise ConfigError(f"unknown prompt name {name!r}; the model's prompts: {known}")
    return prompts[name]


def resolve_prompt(
    prompts: Mapping[str, str], role: str, *, prompt_name: str | None = None, prompt: str | None = None
) -> str:
    """The prompt a text of ``role`` (:data:`QUERY` or :data:`DOCUMENT`) gets: ``prompt`` when given, else the
    prompt ``prompt_name`` names, else the model's prompt for the role (``""`` when it names none).

    Raises:
        ConfigError: both ``prompt`` and ``prompt_name`` are given, or ``prompt_name`` is not one of ``prompts``.
    """
    if prompt is not None and prompt_name is not None:
        raise ConfigError("give a prompt or a prompt name, not both")
    if prompt is not None:
        return prompt
    if prompt_name is not None:
        return named_prompt(prompts, prompt_name)
    return next((prompts[name] for name in ROLE_PROMPT_NAMES[role] if name in prompts), "")
