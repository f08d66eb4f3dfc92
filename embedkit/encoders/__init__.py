"""Encoders: sentence-transformers backed models and a tiny random model for tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedkit.lazy import lazy_exports

if TYPE_CHECKING:
    from embedkit.encoders.locate import BACKENDS, DEFAULT_MODEL
    from embedkit.encoders.sentence_transformer import (
        POOLING_MODES,
        Encoder,
        MLPHead,
        load_encoder,
        resolve_model_path,
    )
    from embedkit.encoders.tiny import build_tiny_model

# Imported on first use: DEFAULT_MODEL and BACKENDS (the CLI's defaults) come without torch and sentence-transformers.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("BACKENDS", "DEFAULT_MODEL"), "embedkit.encoders.locate"),
        **dict.fromkeys(
            ("POOLING_MODES", "Encoder", "MLPHead", "load_encoder", "resolve_model_path"),
            "embedkit.encoders.sentence_transformer",
        ),
        "build_tiny_model": "embedkit.encoders.tiny",
    },
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "POOLING_MODES",
    "Encoder",
    "MLPHead",
    "build_tiny_model",
    "load_encoder",
    "resolve_model_path",
]
