"""A tiny random BERT in the sentence-transformers format, for fast offline tests and examples.

Built from a config (no download): a word-level vocabulary from the texts given, a 2-layer BERT with a
hidden size of 32, random weights from a seed. Same seed and texts, same model, bit for bit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing
from transformers import BertConfig, BertModel, BertTokenizerFast

from embedkit.progress import quiet_library_bars

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocabulary(texts: Iterable[str], size: int = 512) -> list[str]:
    """The special tokens, then the most frequent lower-cased words and punctuation of ``texts``."""
    counts: dict[str, int] = {}
    for text in texts:
        for token in re.findall(r"\w+|[^\w\s]", text.lower()):
            counts[token] = counts.get(token, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return SPECIAL_TOKENS + words[: size - len(SPECIAL_TOKENS)]


def _word_piece_tokenizer(vocabulary: list[str]) -> BertTokenizerFast:
    """A lower-casing BERT-style WordPiece tokenizer over ``vocabulary`` ([CLS] text [SEP])."""
    ids = {token: i for i, token in enumerate(vocabulary)}
    backend = Tokenizer(WordPiece(ids, unk_token="[UNK]"))
    backend.normalizer = BertNormalizer(lowercase=True)
    backend.pre_tokenizer = BertPreTokenizer()
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return BertTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tiny_model(
    path: str | os.PathLike[str],
    texts: Iterable[str],
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    pooling: str = "mean",
    dropout: float = 0.1,
    max_seq_length: int = 64,
    prompts: Mapping[str, str] | None = None,
) -> Path:
    """Write a tiny random sentence-transformers model to ``path`` and return the path.

    ``prompts`` become the model's named prompts (sentence-transformers' ``prompts``), and their words part of
    its vocabulary.
    """
    path = Path(path)
    transformer_dir = path / "transformer"
    transformer_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _word_piece_tokenizer(tiny_vocabulary([*texts, *(prompts or {}).values()]))
    tokenizer.save_pretrained(str(transformer_dir))

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_seq_length,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    with quiet_library_bars():
        BertModel(config).save_pretrained(str(transformer_dir))
        transformer = Transformer(str(transformer_dir), max_seq_length=max_seq_length)
        pooler = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)
        model = SentenceTransformer(modules=[transformer, pooler], device="cpu", prompts=dict(prompts or {}))
        model.save(str(path), create_model_card=False)
    return path
