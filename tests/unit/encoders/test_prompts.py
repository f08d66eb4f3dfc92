"""Which prompt a query or a document gets (embedkit.encoders.prompts)."""

from __future__ import annotations

import pytest

from embedkit.encoders.prompts import DOCUMENT, QUERY, resolve_prompt
from embedkit.errors import ConfigError

E5 = {"query": "query: ", "document": "passage: ", "clustering": "cluster: "}


def test_a_role_gets_the_model_prompt_for_it() -> None:
    assert resolve_prompt(E5, QUERY) == "query: "
    assert resolve_prompt(E5, DOCUMENT) == "passage: "


def test_an_explicit_prompt_or_name_wins() -> None:
    assert resolve_prompt(E5, QUERY, prompt="") == ""
    assert resolve_prompt(E5, DOCUMENT, prompt="doc: ") == "doc: "
    assert resolve_prompt(E5, DOCUMENT, prompt_name="clustering") == "cluster: "


def test_documents_fall_back_to_passage_and_corpus_prompts_as_sentence_transformers_does() -> None:
    assert resolve_prompt({"passage": "p: ", "corpus": "c: "}, DOCUMENT) == "p: "
    assert resolve_prompt({"corpus": "c: "}, DOCUMENT) == "c: "
    assert resolve_prompt({}, DOCUMENT) == resolve_prompt({}, QUERY) == ""


def test_bad_requests_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown prompt name 'qeury'; the model's prompts: clustering, document"):
        resolve_prompt(E5, QUERY, prompt_name="qeury")
    with pytest.raises(ConfigError, match="unknown prompt name 'query'; the model's prompts: none"):
        resolve_prompt({}, QUERY, prompt_name="query")
    with pytest.raises(ConfigError, match="not both"):
        resolve_prompt(E5, QUERY, prompt_name="query", prompt="q: ")
