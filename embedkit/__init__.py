"""embedkit: contrastive text embeddings, from fine-tuning to indexing and evaluation.

The main entry points::

    import embedkit
    encoder = embedkit.load_encoder()                       # all-MiniLM-L6-v2, offline when installed
    examples = embedkit.read_examples("sentences.txt")      # any data kind, any format
    loss = embedkit.build_loss("simcse-unsup")
    embedkit.fit(encoder, examples, loss, embedkit.FitSettings(max_steps=100), kind="sentences")
    embedkit.evaluate_sts(encoder, "sts.jsonl")
"""

from __future__ import annotations

from embedkit.data import collate, read_examples
from embedkit.encoders import DEFAULT_MODEL, Encoder, load_encoder
from embedkit.errors import ConfigError, DataError, EmbedkitError, UnknownNameError
from embedkit.eval import EVALUATORS, STSEvaluator, evaluate_sts
from embedkit.losses import LOSSES, build_loss
from embedkit.training.fit import FitResult, FitSettings, fit
from embedkit.types import EmbeddedBatch, Example, Kind, Scores, TextBatch
from embedkit.version import __version__

__all__ = [
    "DEFAULT_MODEL",
    "EVALUATORS",
    "LOSSES",
    "ConfigError",
    "DataError",
    "EmbeddedBatch",
    "EmbedkitError",
    "Encoder",
    "Example",
    "FitResult",
    "FitSettings",
    "Kind",
    "STSEvaluator",
    "Scores",
    "TextBatch",
    "UnknownNameError",
    "build_loss",
    "collate",
    "evaluate_sts",
    "fit",
    "load_encoder",
    "read_examples",
]
