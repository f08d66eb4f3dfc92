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

import logging
from typing import TYPE_CHECKING

from embedkit import progress  # noqa: F401  (in a notebook kernel, chooses tqdm's bar before any library does)
from embedkit.errors import ConfigError, DataError, EmbedkitError, UnknownNameError
from embedkit.lazy import lazy_exports
from embedkit.version import __version__  # noqa: F401  (embedkit.__version__)

if TYPE_CHECKING:
    from embedkit.data import ColumnPrompts, collate, read_examples
    from embedkit.encoders import DEFAULT_MODEL, Encoder, load_encoder
    from embedkit.eval import (
        EVALUATORS,
        CombinedEvaluator,
        GeometryEvaluator,
        PreferenceEvaluator,
        RetrievalEvaluator,
        STSEvaluator,
        evaluate_retrieval,
        evaluate_sts,
    )
    from embedkit.index import Index, build_index
    from embedkit.losses import LOSSES, build_loss
    from embedkit.mining import mine_hard_negatives
    from embedkit.training.adapt import adapt
    from embedkit.training.fit import FitResult, FitSettings, fit
    from embedkit.types import EmbeddedBatch, Evaluator, Example, Kind, Scores, TextBatch, TextEncoder

# A library logs, the application shows: without logging configured, embedkit's messages go nowhere.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Imported on first use, so that `import embedkit` (and every CLI command) does not pay for torch up front.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("ColumnPrompts", "collate", "read_examples"), "embedkit.data"),
        **dict.fromkeys(("DEFAULT_MODEL", "Encoder", "load_encoder"), "embedkit.encoders"),
        **dict.fromkeys(
            (
                "EVALUATORS",
                "CombinedEvaluator",
                "GeometryEvaluator",
                "PreferenceEvaluator",
                "RetrievalEvaluator",
                "STSEvaluator",
                "evaluate_retrieval",
                "evaluate_sts",
            ),
            "embedkit.eval",
        ),
        **dict.fromkeys(("Index", "build_index"), "embedkit.index"),
        **dict.fromkeys(("LOSSES", "build_loss"), "embedkit.losses"),
        "mine_hard_negatives": "embedkit.mining",
        "adapt": "embedkit.training.adapt",
        **dict.fromkeys(("FitResult", "FitSettings", "fit"), "embedkit.training.fit"),
        **dict.fromkeys(
            ("EmbeddedBatch", "Evaluator", "Example", "Kind", "Scores", "TextBatch", "TextEncoder"), "embedkit.types"
        ),
    },
)

__all__ = [
    "DEFAULT_MODEL",
    "EVALUATORS",
    "LOSSES",
    "ColumnPrompts",
    "CombinedEvaluator",
    "ConfigError",
    "DataError",
    "EmbeddedBatch",
    "EmbedkitError",
    "Encoder",
    "Evaluator",
    "Example",
    "FitResult",
    "FitSettings",
    "GeometryEvaluator",
    "Index",
    "Kind",
    "PreferenceEvaluator",
    "RetrievalEvaluator",
    "STSEvaluator",
    "Scores",
    "TextBatch",
    "TextEncoder",
    "UnknownNameError",
    "adapt",
    "build_index",
    "build_loss",
    "collate",
    "evaluate_retrieval",
    "evaluate_sts",
    "fit",
    "load_encoder",
    "mine_hard_negatives",
    "read_examples",
]
