"""Options and output helpers that several commands share."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from embedkit.encoders import BACKENDS, DEFAULT_MODEL
from embedkit.errors import ConfigError
from embedkit.precision import PRECISIONS
from embedkit.types import JsonValue

if TYPE_CHECKING:  # the CLI imports torch-backed modules only when a command runs
    from embedkit.encoders import Encoder


def print_json(value: JsonValue | Mapping[str, object]) -> None:
    """Print ``value`` as indented JSON; a mapping (such as a ``TypedDict``) must hold JSON values too."""
    print(json.dumps(value, indent=2))


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--precision``, ``--backend``, ``--batch-size`` and ``--device``: what :func:`load_model`
    reads."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="compute precision (default: auto)")
    add_backend_option(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend``: what runs encoding (see :func:`embedkit.encoders.load_encoder`)."""
    parser.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="what runs encoding: auto (openvino on the CPU where it is installed, torch elsewhere), torch, "
        "openvino (the CPU, bf16 on AMX or AVX-512 BF16; pip install 'embedkit[openvino]') or openvino-int8 (the "
        "int8 model that `embedkit quantize` wrote into the model folder) (default: $EMBEDKIT_BACKEND, else auto)",
    )


def add_prompt_options(parser: argparse.ArgumentParser, texts: str, default: str) -> None:
    """``--prompt-name`` and ``--prompt`` (one or the other): the prompt put before ``texts``, instead of
    ``default``."""
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt-name", default=None, metavar="NAME",
                         help=f"put the model's prompt NAME before {texts} (default: {default})")
    prompts.add_argument("--prompt", default=None, metavar="TEXT",
                         help=f'put TEXT before {texts}, e.g. "query: " (default: {default})')


def add_truncate_dim(parser: argparse.ArgumentParser) -> None:
    """``--truncate-dim N``: the first N dimensions of each embedding (a Matryoshka model's smaller embeddings)."""
    parser.add_argument("--truncate-dim", type=int, default=None, metavar="N",
                        help="keep the first N dimensions of each embedding, normalised again when the model "
                        "normalises (default: all)")


def load_model(args: argparse.Namespace) -> Encoder:
    """The encoder that :func:`add_model_options` (and :func:`add_truncate_dim`, where given) describe."""
    from embedkit.encoders import load_encoder

    return load_encoder(args.model, device=args.device, precision=args.precision, backend=args.backend,
                        truncate_dim=getattr(args, "truncate_dim", None))


def parse_assignments(items: list[str], example: str) -> dict[str, float]:
    """``["nprobe=16", "efSearch=64"]`` -> ``{"nprobe": 16.0, "efSearch": 64.0}``; ``example`` shows the form in
    the error a malformed item raises."""
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"{example}, got {item!r}")
    return values
