"""Rendering (prompt, response) within a token budget: the prompt is cut from the left, the response kept."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import BertTokenizerFast

from embedkit.data.render import render_pair, render_pairs, truncate_left
from embedkit.errors import ConfigError

# a word-level vocabulary with two sub-word pieces: "playing" is "play ##ing", "cats" is "cat ##s"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "human", "assistant", ":", "?", ".", "the", "cat", "play",
         "##ing", "##s", "a", "b", "c", "d", "e", "yes", "no", "hello", "world"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BertTokenizerFast:
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab=str(vocab), do_lower_case=True)


def n_tokens(tokenizer, text: str) -> int:
    """Tokens the encoder sees, [CLS] and [SEP] included."""
    return len(tokenizer(text)["input_ids"])


TRANSCRIPT = "\n\nHuman: a b c?\n\nAssistant: d.\n\nHuman: e?\n\nAssistant:"  # 16 tokens


def test_a_pair_that_fits_is_kept_exactly(tokenizer) -> None:
    assert n_tokens(tokenizer, TRANSCRIPT + " yes") == 19
    assert render_pair(tokenizer, TRANSCRIPT, " yes", max_length=19) == TRANSCRIPT + " yes"  # multi-turn intact


def test_a_long_prompt_loses_its_oldest_words_first(tokenizer) -> None:
    # 17 tokens: [CLS], [SEP] and " yes" leave 14 for the prompt, so its first two (human, :) go
    rendered = render_pair(tokenizer, TRANSCRIPT, " yes", max_length=17)
    assert rendered == "a b c?\n\nAssistant: d.\n\nHuman: e?\n\nAssistant: yes"
    assert n_tokens(tokenizer, rendered) == 17
    # with room for the response only, the prompt is dropped entirely
    assert render_pair(tokenizer, TRANSCRIPT, " yes", max_length=3) == " yes"


def test_a_response_longer_than_the_budget_is_cut_from_the_right(tokenizer) -> None:
    rendered = render_pair(tokenizer, TRANSCRIPT, " yes no yes no yes", max_length=5)
    assert rendered == " yes no yes"
    assert n_tokens(tokenizer, rendered) == 5


def test_cuts_never_leave_a_word_fragment(tokenizer) -> None:
    # "the cat playing" is 4 tokens (the, cat, play, ##ing): one token of room would start inside "playing"
    assert render_pair(tokenizer, "the cat playing", " yes", max_length=4) == " yes"
    assert render_pair(tokenizer, "the cat playing", " yes", max_length=5) == "playing yes"
    # the response keeps whole words: "play" of "playing" would be a different word
    assert render_pair(tokenizer, "", "yes playing", max_length=4) == "yes"
    # a single word longer than the whole budget is the one case cut inside a word
    assert render_pair(tokenizer, "", "playing", max_length=3) == "play"


def test_words_never_fuse_at_the_seam(tokenizer) -> None:
    assert render_pair(tokenizer, "hello", "world", max_length=16) == "hello world"
    assert render_pair(tokenizer, "hello ", "world", max_length=16) == "hello world"
    assert render_pair(tokenizer, "Assistant:", " yes", max_length=16) == "Assistant: yes"


def test_blank_and_empty_texts(tokenizer) -> None:
    assert render_pair(tokenizer, TRANSCRIPT, " ", max_length=64) == TRANSCRIPT + " "  # blank replies are real
    assert render_pair(tokenizer, "", "", max_length=8) == ""


def test_truncate_left_keeps_the_latest_turn(tokenizer) -> None:
    assert truncate_left(tokenizer, TRANSCRIPT, max_length=8) == "Human: e?\n\nAssistant:"


def test_batch_rendering_matches_one_by_one_and_respects_the_budget(tokenizer) -> None:
    prompts = [TRANSCRIPT * k for k in range(1, 5)] + ["the cats playing"]
    responses = [" yes", " no " * 6, "", "hello world", "cats"]
    for max_length in (4, 7, 12, 40):
        rendered = render_pairs(tokenizer, prompts, responses, max_length)
        assert rendered == [render_pair(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
        for text, prompt, response in zip(rendered, prompts, responses):
            assert n_tokens(tokenizer, text) <= max_length
            if n_tokens(tokenizer, response) <= max_length:
                assert text.endswith(response)


def test_bad_settings_are_refused(tokenizer) -> None:
    with pytest.raises(ConfigError, match="no room"):
        render_pair(tokenizer, "a", "b", max_length=2)
    with pytest.raises(ConfigError, match="fast"):  # offsets and word ids come from fast tokenizers only
        render_pair(SimpleNamespace(is_fast=False), "a", "b", max_length=8)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        render_pairs(tokenizer, ["a", "b"], ["c"], max_length=8)
