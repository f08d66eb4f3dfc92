"""Model cards: the ``README.md`` of a saved model, in the Hugging Face hub's format.

A card opens with the hub's YAML metadata block (``library_name: sentence-transformers``, ``base_model``, tags),
so that a folder embedkit saves can be pushed with ``huggingface_hub`` or ``SentenceTransformer.push_to_hub``
and is found and shown like any sentence-transformers model; the body says how the model was made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.fsutil import atomic_write_bytes
from embedkit.version import __version__

CARD_FILE = "README.md"
TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction", "embedkit")


@dataclass(frozen=True)
class ModelCard:
    """What a card says about a trained model.

    Attributes:
        base_model: the model training started from (hub name or path).
        objective: the loss or objective, with its parameters as a recipe writes them.
        data: where the training rows came from, and their kind.
        steps: optimisation steps trained.
        precision: the compute precision of training.
        max_seq_length: the inference length saved with the model.
        train_max_seq_length: the length inputs were truncated to in training.
        dev_metric: the dev metric that chose this model, or ``None`` without a dev set.
        dev_before: dev metrics of the start model.
        dev_after: dev metrics of this model.
        chosen: how this model was chosen (``"step 40"``, ``"interpolation 0.5 of start and step 80"``, ...).
    """

    base_model: str
    objective: str
    data: str
    steps: int
    precision: str
    max_seq_length: int
    train_max_seq_length: int
    dev_metric: str | None = None
    dev_before: Mapping[str, float] = field(default_factory=dict)
    dev_after: Mapping[str, float] = field(default_factory=dict)
    chosen: str = ""

    def markdown(self, name: str) -> str:
        """The whole ``README.md`` of the model saved at ``name`` (the path users load it from)."""
        metadata = [
            "---",
            "library_name: sentence-transformers",
            "pipeline_tag: sentence-similarity",
            f"base_model: {json.dumps(self.base_model)}",
            "tags:",
            *(f"- {tag}" for tag in TAGS),
            "---",
        ]
        lines = [
            *metadata,
            "",
            f"# {name}",
            "",
            f"A [sentence-transformers](https://www.sbert.net) model fine-tuned from `{self.base_model}` with "
            f"embedkit {__version__}. It maps texts to dense vectors for semantic search, clustering and "
            "similarity.",
            "",
            "## Training",
            "",
            "| | |",
            "| --- | --- |",
            f"| base model | `{self.base_model}` |",
            f"| objective | {self.objective} |",
            f"| data | {self.data} |",
            f"| steps | {self.steps} |",
            f"| precision | {self.precision} |",
            f"| max_seq_length | {self.max_seq_length} (training: {self.train_max_seq_length}) |",
        ]
        if self.chosen:
            lines.append(f"| chosen | {self.chosen} |")
        if self.dev_metric is not None:
            lines += ["", f"## Dev evaluation (selection metric: `{self.dev_metric}`)", "",
                      "| metric | start model | this model |", "| --- | ---: | ---: |"]
            for metric, after in self.dev_after.items():
                before = self.dev_before.get(metric)
                shown = "" if before is None else f"{before:.2f}"
                lines.append(f"| {metric} | {shown} | {after:.2f} |")
        lines += [
            "",
            "## Usage",
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            "",
            f'model = SentenceTransformer("{name}")',
            'embeddings = model.encode(["A first sentence.", "A second one."])',
            "```",
            "",
        ]
        return "\n".join(lines)


def write_model_card(folder: str | os.PathLike[str], card: ModelCard, name: str | None = None) -> Path:
    """Write ``card`` as ``folder/README.md`` (atomically); returns its path.

    ``name`` is where users will load the model from (default ``folder``), for a model written in a temporary
    folder first."""
    path = Path(folder) / CARD_FILE
    atomic_write_bytes(path, card.markdown(name or str(folder)).encode("utf-8"))
    return path
