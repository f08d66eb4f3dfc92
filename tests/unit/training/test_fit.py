"""fit(): optimisation, logging, best-model selection and exact resume, on a tiny random model."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from conftest import FIT_SENTENCES as SENTENCES
from conftest import sentence_examples
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from embedkit.data import ColumnPrompts
from embedkit.data.collate import collate
from embedkit.encoders import load_encoder
from embedkit.encoders.batching import embed_batch
from embedkit.errors import ConfigError
from embedkit.losses import build_loss
from embedkit.losses.objective import Objective
from embedkit.training.fit import FitSettings, fit, linear_schedule
from embedkit.types import Example, Kind


def settings(tmp_path, **changes) -> FitSettings:
    base = dict(output_dir=tmp_path, batch_size=4, lr=1e-3, epochs=3, save_steps=2, log_steps=1,
                show_progress=False, warmup_ratio=0.2, seed=7)
    return FitSettings(**{**base, **changes})


class CountingEvaluator:
    """A dev 'metric' that is deterministic in the weights: minus the norm of the first layer's weights."""

    primary_metric = "score"
    higher_is_better = True

    def __call__(self, encoder) -> dict[str, float]:
        weight = next(encoder.model.parameters())
        return {"score": -float(weight.detach().norm())}


def weights(encoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def test_fit_encodes_in_torch_whatever_the_backend(tiny_model_path, tmp_path) -> None:
    pytest.importorskip("openvino")
    encoder = load_encoder(tiny_model_path, precision="fp32", backend="openvino")
    backends = []

    class BackendEvaluator(CountingEvaluator):
        def __call__(self, encoder) -> dict[str, float]:
            backends.append(encoder.backend)
            encoder.encode(SENTENCES[:2])
            return super().__call__(encoder)

    fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path, epochs=1),
        evaluator=BackendEvaluator())
    assert backends and set(backends) == {"torch"}
    assert encoder.backend == "openvino"  # handed back for inference


def test_fit_trains_logs_and_saves(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32", mlp_head=True)
    before = weights(encoder)
    result = fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path),
                 evaluator=CountingEvaluator())
    assert result.steps == 6  # 10 rows, batch 4, drop the last partial batch: 2 steps x 3 epochs
    after = weights(load_encoder(tmp_path / "final", precision="fp32", mlp_head=True))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in records if "eval" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 6
    assert result.best_score == max(r["eval"]["score"] for r in evals)
    assert all("scale" not in r for r in evals)  # a user's evaluator: its scale is not embedkit's to state
    assert (tmp_path / "best" / "modules.json").exists() and (tmp_path / "final" / "modules.json").exists()


def test_best_model_is_the_best_evaluation(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    result = fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path, eval_steps=2),
                 evaluator=CountingEvaluator())
    best = load_encoder(tmp_path / "best", precision="fp32")
    assert CountingEvaluator()(best)["score"] == pytest.approx(result.best_score, rel=1e-6)


def test_a_step_applies_adamw_with_clipping_as_torchs_reference_loop(tiny_model_path, tmp_path) -> None:
    """fit runs torch's fused AdamW; one step must give the weights of the plain per-parameter implementation."""
    examples = [Example(anchor=text, positive=text.upper()) for text in SENTENCES[:8]]
    trained = load_encoder(tiny_model_path, precision="fp32")
    reference = load_encoder(tiny_model_path, precision="fp32")
    for encoder in (trained, reference):
        for module in encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # the same forward pass in both, whatever the random state
    loss = build_loss("infonce", temperature=0.05)
    fit(trained, examples, loss, settings(tmp_path, batch_size=8, max_steps=1, warmup_ratio=0.0, weight_decay=0.01,
                                            max_grad_norm=0.5), kind=Kind.PAIRS)

    params = [p for p in reference.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=False, fused=False)
    reference.train()
    embedded = embed_batch(reference, collate(examples, Kind.PAIRS))
    loss(embedded).backward()  # a batch of all rows: InfoNCE's mean does not depend on their order
    torch.nn.utils.clip_grad_norm_(params, 0.5)
    optimizer.step()
    actual = weights(trained)
    for name, expected in weights(reference).items():
        torch.testing.assert_close(actual[name], expected, rtol=1e-5, atol=1e-6, msg=name)


def test_interrupted_run_resumes_to_the_same_weights(tiny_model_path, tmp_path) -> None:
    examples = sentence_examples()
    straight = load_encoder(tiny_model_path, precision="fp32", mlp_head=True)
    fit(straight, examples, build_loss("simcse-unsup"), settings(tmp_path / "straight"))

    class Crash(Exception):
        pass

    def crash_at_step_5(step: int, metrics: dict) -> None:
        if step == 5:  # after the checkpoint of step 4, mid-epoch 3
            raise Crash

    interrupted = load_encoder(tiny_model_path, precision="fp32", mlp_head=True)
    with pytest.raises(Crash):
        fit(interrupted, examples, build_loss("simcse-unsup"), settings(tmp_path / "resumed"),
            callbacks=[crash_at_step_5])
    resumed = load_encoder(tiny_model_path, precision="fp32", mlp_head=True)  # a fresh process would start here
    result = fit(resumed, examples, build_loss("simcse-unsup"), settings(tmp_path / "resumed"))

    assert result.steps == 6
    expected, actual = weights(straight), weights(resumed)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_uses_safe_formats(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path))
    state = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6
    assert load_file(str(tmp_path / "checkpoint" / "encoder.safetensors"))


def test_triplets_train_with_hard_negatives(tiny_model_path, tmp_path) -> None:
    rows = [Example(anchor=a, positive=b, negatives=(c,)) for a, b, c in zip(SENTENCES, SENTENCES[1:], SENTENCES[2:])]
    encoder = load_encoder(tiny_model_path, precision="bf16")
    result = fit(encoder, rows, build_loss("simcse-sup"), settings(tmp_path, epochs=1), kind="triplets")
    assert result.steps == 2
    assert all(r["loss"] > 0 for r in result.history)


def test_linear_schedule() -> None:
    factor = linear_schedule(warmup_steps=2, total_steps=10)
    assert [round(factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.333, 0.667, 1.0, 0.5, 0.0]


def test_bad_settings(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    loss = build_loss("simcse-unsup")
    with pytest.raises(ConfigError, match="fill one batch"):
        fit(encoder, sentence_examples(), loss, settings(tmp_path, batch_size=64))
    with pytest.raises(ConfigError, match="at least 2"):
        fit(encoder, sentence_examples(), loss, settings(tmp_path, batch_size=1))
    with pytest.raises(ConfigError, match="kind="):
        fit(encoder, list(sentence_examples()), loss, settings(tmp_path))


class CountingObjective(Objective):
    """An objective with a trainable scale and a buffer that counts calls: both must survive a resume."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.inner = build_loss("simcse-unsup")

    def forward(self, encoder, batch) -> torch.Tensor:
        self.calls += 1
        return self.scale * self.inner(embed_batch(encoder, batch))


def test_objectives_get_encoder_and_batch_and_their_state_is_checkpointed(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    objective = CountingObjective()
    fit(encoder, sentence_examples(), objective, settings(tmp_path))
    assert int(objective.calls) == 6 and objective.scale.item() != 1.0

    restored = CountingObjective()
    fit(load_encoder(tiny_model_path, precision="fp32"), sentence_examples(), restored, settings(tmp_path))
    assert int(restored.calls) == 6  # resumed from the final checkpoint: no step repeated
    assert restored.scale.item() == objective.scale.item()


class BatchRecorder(Objective):
    """An InfoNCE objective that records the anchor and positive texts of every batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_loss("infonce")
        self.seen: list[tuple[str, str]] = []

    def forward(self, encoder, batch) -> torch.Tensor:
        self.seen += list(zip(batch.anchors, batch.positives, strict=True))
        return self.inner(embed_batch(encoder, batch))


def pairs() -> list[Example]:
    return [Example(sentence, SENTENCES[(i + 1) % len(SENTENCES)]) for i, sentence in enumerate(SENTENCES)]


def test_texts_train_after_the_model_prompts_by_default(prompted_model_path, tmp_path) -> None:
    encoder = load_encoder(prompted_model_path, precision="fp32")
    recorder = BatchRecorder()
    fit(encoder, pairs(), recorder, settings(tmp_path, epochs=1), kind="pairs")
    assert recorder.seen and all(a.startswith("query: ") and p.startswith("passage: ") for a, p in recorder.seen)
    assert SentenceTransformer(str(tmp_path / "final"), device="cpu").prompts == {
        "query": "query: ", "document": "passage: "}


def test_column_prompts_train_and_become_the_model_prompts(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    recorder = BatchRecorder()
    prompts = ColumnPrompts(anchor="search: ", positive="")
    fit(encoder, pairs(), recorder, settings(tmp_path, epochs=1), kind="pairs", prompts=prompts)
    assert all(a.startswith("search: ") and not p.startswith("search: ") for a, p in recorder.seen)
    assert encoder.prompts == {"query": "search: ", "document": ""}
    saved = SentenceTransformer(str(tmp_path / "final"), device="cpu")
    assert saved.prompts == {"query": "search: ", "document": ""}
    np.testing.assert_allclose(load_encoder(tmp_path / "final", precision="fp32").encode(["a cat"], prompt_name="query"),
                               saved.encode_query(["a cat"]), atol=1e-6)


def test_prompts_with_a_pooling_that_leaves_them_out_are_refused(prompted_model_path, tmp_path) -> None:
    encoder = load_encoder(prompted_model_path, precision="fp32")
    encoder.model.set_pooling_include_prompt(False)
    with pytest.raises(ConfigError, match="include_prompt=false"):
        fit(encoder, pairs(), build_loss("infonce"), settings(tmp_path), kind="pairs")
    fit(encoder, pairs(), build_loss("infonce"), settings(tmp_path, max_steps=1), kind="pairs",
        prompts=ColumnPrompts("", "", ""))  # without prompts it trains


def test_training_on_the_cpu_keeps_freed_memory_for_reuse(tiny_model_path, tmp_path, monkeypatch) -> None:
    calls = []
    # the module, not the package's fit() of the same name
    monkeypatch.setattr(importlib.import_module("embedkit.training.fit"), "keep_freed_memory", lambda: calls.append(1))
    encoder = load_encoder(tiny_model_path, device="cpu", precision="fp32")
    fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path, epochs=1))
    assert calls == [1]
