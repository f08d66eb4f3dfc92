"""Encoders: sentence-transformers backed models and a tiny random model for tests."""

from embedkit.encoders.sentence_transformer import (
    BACKENDS,
    DEFAULT_MODEL,
    POOLING_MODES,
    Encoder,
    MLPHead,
    load_encoder,
    resolve_model_path,
)
from embedkit.encoders.tiny import build_tiny_model

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
