"""From a run to a model that loses nothing: the best weights in hand, step 0 and WiSE-FT interpolations as
candidates, the inference length kept, a model card, and run folders that never misreport their recipe."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIT_SENTENCES as SENTENCES
from conftest import sentence_examples
from sentence_transformers import SentenceTransformer

from embedkit.cli import main
from embedkit.cli.train import summary_lines
from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.losses import Objective, build_loss
from embedkit.training.fit import FitSettings, fit, interpolate_weights


def settings(tmp_path, **changes) -> FitSettings:
    base = dict(output_dir=tmp_path, batch_size=4, lr=1e-2, epochs=3, save_steps=100, log_steps=1, eval_steps=1,
                show_progress=False, seed=7)
    return FitSettings(**{**base, **changes})


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k] - b[k]).float() ** 2).sum() for k in a if a[k].is_floating_point()) ** 0.5)


class DistanceEvaluator:
    """A dev 'metric' deterministic in the weights: how far the model is from ``start``, optionally from a
    ``target`` distance. With ``higher_is_better=False`` the start model (distance 0) is the best possible."""

    primary_metric = "distance"

    def __init__(self, start: dict[str, torch.Tensor], higher_is_better: bool = True, target: float | None = None):
        self.start = start
        self.higher_is_better = higher_is_better
        self.target = target

    def __call__(self, encoder) -> dict[str, float]:
        value = distance(weights(encoder.model), self.start)
        return {"distance": value if self.target is None else -abs(value - self.target), "from_start": value}


def model_weights(path) -> dict[str, torch.Tensor]:
    return weights(SentenceTransformer(str(path), device="cpu"))


def test_fit_returns_holding_the_best_weights(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    start = weights(encoder.model)
    # the farthest model from the start wins, and distance grows with training: the best is the last evaluation
    # of a run whose last step is then undone by evaluating only every 4 steps (steps 0, 4, and the end, 6)
    result = fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path, eval_steps=4),
                 evaluator=DistanceEvaluator(start))
    held = weights(encoder.model)
    saved = model_weights(tmp_path / "best")
    assert result.best_step in (4, 6) and result.metric == "distance"
    for name in saved:
        torch.testing.assert_close(held[name], saved[name], rtol=0, atol=0, msg=name)


def test_step_zero_is_a_candidate_and_lower_can_be_better(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    start = weights(encoder.model)
    result = fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path),
                 evaluator=DistanceEvaluator(start, higher_is_better=False))
    assert result.best_step == 0 and result.best_score == 0
    assert distance(weights(encoder.model), start) == 0  # fit hands back the start model, which nothing beat
    assert distance(model_weights(tmp_path / "best"), start) == 0
    assert distance(model_weights(tmp_path / "final"), start) > 0


def test_interpolation_at_zero_and_one_are_the_endpoints() -> None:
    start = {"w": torch.tensor([0.0, 2.0]), "ids": torch.tensor([1, 2])}
    end = {"w": torch.tensor([4.0, 6.0]), "ids": torch.tensor([1, 2])}
    assert torch.equal(interpolate_weights(start, end, 0.0)["w"], start["w"])
    assert torch.equal(interpolate_weights(start, end, 1.0)["w"], end["w"])
    assert torch.equal(interpolate_weights(start, end, 0.25)["w"], torch.tensor([1.0, 3.0]))
    assert torch.equal(interpolate_weights(start, end, 0.25)["ids"], end["ids"])
    with pytest.raises(ConfigError, match="two different models"):
        interpolate_weights(start, {"w": end["w"]}, 0.5)


def test_a_wise_ft_interpolation_wins_when_the_dev_set_prefers_it(tiny_model_path, tmp_path) -> None:
    examples, loss = sentence_examples(), build_loss("simcse-unsup")
    plain = load_encoder(tiny_model_path, precision="fp32")
    start = weights(plain.model)
    fit(plain, examples, loss, settings(tmp_path / "plain", eval_steps=100), evaluator=DistanceEvaluator(start))
    half_way = distance(weights(plain.model), start) / 2  # the distance of the 0.5 interpolation exactly

    encoder = load_encoder(tiny_model_path, precision="fp32")
    result = fit(encoder, examples, build_loss("simcse-unsup"),
                 settings(tmp_path / "wise", eval_steps=100, interpolation=(0.25, 0.5, 0.75)),
                 evaluator=DistanceEvaluator(start, target=half_way))
    assert result.best_interpolation == 0.5 and result.best_score == pytest.approx(0, abs=1e-4)
    log = [json.loads(line) for line in (tmp_path / "wise" / "log.jsonl").read_text().splitlines()]
    assert [r["interpolation"] for r in log if "interpolation" in r] == [0.25, 0.5, 0.75]
    assert distance(weights(encoder.model), start) == pytest.approx(half_way, rel=1e-4)
    assert distance(model_weights(tmp_path / "wise" / "best"), start) == pytest.approx(half_way, rel=1e-4)
    assert "interpolation 0.5" in (tmp_path / "wise" / "best" / "README.md").read_text()
    # no trained step beat the start (the last ties with it), so the final model, step 6, was mixed
    assert result.best_step == 6
    assert summary_lines(result)[-1].endswith("at interpolation 0.5 of the start model and step 6)")


class Crash(Exception):
    pass


def crash_at_step_5(step: int, metrics: dict) -> None:
    if step == 5:
        raise Crash


@pytest.mark.parametrize("interrupted", [False, True])
def test_interpolation_mixes_the_start_with_the_best_trained_step_not_the_last(tiny_model_path, tmp_path,
                                                                                interrupted) -> None:
    examples = sentence_examples()
    plain = load_encoder(tiny_model_path, precision="fp32")
    start = weights(plain.model)
    fit(plain, examples, build_loss("simcse-unsup"), settings(tmp_path / "plain", eval_steps=2),
        evaluator=DistanceEvaluator(start))
    log = [json.loads(line) for line in (tmp_path / "plain" / "log.jsonl").read_text().splitlines()]
    step_two, last = (next(r["eval"]["from_start"] for r in log if r.get("step") == s and "eval" in r) for s in (2, 6))
    assert last > step_two > 0

    # the dev set prefers step 2's distance from the start: step 2 is the best trained model, the last is worse
    wise = settings(tmp_path / "wise", eval_steps=2, save_steps=2, interpolation=(0.25, 0.5))
    evaluator = DistanceEvaluator(start, target=step_two)
    if interrupted:  # resumed at step 4: step 2's weights are then on disk only, in best/
        with pytest.raises(Crash):
            fit(load_encoder(tiny_model_path, precision="fp32"), examples, build_loss("simcse-unsup"), wise,
                evaluator=evaluator, callbacks=[crash_at_step_5])
    encoder = load_encoder(tiny_model_path, precision="fp32")
    result = fit(encoder, examples, build_loss("simcse-unsup"), wise, evaluator=evaluator)
    assert result.start_step == (4 if interrupted else 0)
    log = [json.loads(line) for line in (tmp_path / "wise" / "log.jsonl").read_text().splitlines()]
    mixed = {r["interpolation"]: r for r in log if "interpolation" in r}
    assert set(mixed) == {0.25, 0.5} and all(r["of_step"] == 2 for r in mixed.values())
    for weight, record in mixed.items():  # (1 - a) * start + a * step 2 lies a * |step 2 - start| from the start
        assert record["eval"]["from_start"] == pytest.approx(weight * step_two, rel=1e-4)
    assert result.best_step == 2 and result.best_interpolation is None
    assert distance(weights(encoder.model), start) == pytest.approx(step_two, rel=1e-6)


class LengthProbe(Objective):
    """InfoNCE that records the encoder's max_seq_length at every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_loss("simcse-unsup")
        self.seen: list[int] = []

    def forward(self, encoder, batch):
        from embedkit.encoders.batching import embed_batch

        self.seen.append(encoder.max_seq_length)
        return self.inner(embed_batch(encoder, batch))


def test_training_length_is_a_training_setting(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    inference_length = encoder.max_seq_length
    probe = LengthProbe()
    fit(encoder, sentence_examples(), probe, settings(tmp_path, max_seq_length=8), evaluator=DistanceEvaluator(
        weights(encoder.model)))
    assert set(probe.seen) == {8} and inference_length != 8
    assert encoder.max_seq_length == inference_length
    for folder in ("best", "final"):
        assert SentenceTransformer(str(tmp_path / folder), device="cpu").max_seq_length == inference_length
        card = (tmp_path / folder / "README.md").read_text()
        assert f"| max_seq_length | {inference_length} (training: 8) |" in card


def test_saved_models_carry_a_model_card(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path),
        evaluator=DistanceEvaluator(weights(encoder.model)), source="sentences.txt (sentences, 10 rows)")
    card = (tmp_path / "best" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers\n")
    assert f'base_model: "{tiny_model_path}"' in card and "sentence-transformers" in card
    assert "| data | sentences.txt (sentences, 10 rows) |" in card and "| steps | 6 |" in card
    assert "| precision | float32 |" in card and "| distance | 0.00 |" in card
    assert f'SentenceTransformer("{tmp_path / "best"}")' in card


@pytest.mark.parametrize(("changes", "match"), [
    (dict(interpolation=(0.5,)), "give an evaluator"),
    (dict(interpolation=(1.0,)), "strictly between 0 and 1"),
    (dict(max_seq_length=0), "max_seq_length must be at least 1"),
])
def test_bad_settings(tiny_model_path, tmp_path, changes, match) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    evaluator = DistanceEvaluator(weights(encoder.model)) if changes.get("interpolation") == (1.0,) else None
    with pytest.raises(ConfigError, match=match):
        fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path, **changes),
            evaluator=evaluator)


def test_an_evaluator_without_the_protocol_is_refused(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    with pytest.raises(ConfigError, match="needs primary_metric, higher_is_better"):
        fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings(tmp_path),
            evaluator=lambda encoder: {"spearman": 1.0})


# -- run folders ---------------------------------------------------------------------------------------------
@pytest.fixture
def recipe(tmp_path, tiny_model_path):
    (tmp_path / "s.txt").write_text("".join(f"{text}\n" for text in SENTENCES))
    path = tmp_path / "r.toml"
    path.write_text(
        f'[model]\nname = {json.dumps(str(tiny_model_path))}\nprecision = "fp32"\n'
        f'[data]\npath = {json.dumps(str(tmp_path / "s.txt"))}\n'
        f'[loss]\nname = "simcse-unsup"\n'
        f'[train]\noutput_dir = {json.dumps(str(tmp_path / "run"))}\nbatch_size = 4\nmax_steps = 2\nlog_steps = 1\n'
    )
    return path


def train(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["train", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_rerun_with_a_changed_recipe_is_refused(recipe, tmp_path, capsys) -> None:
    assert train(capsys, str(recipe))[0] == 0
    recorded = (tmp_path / "run" / "recipe.json").read_text()
    code, _, err = train(capsys, str(recipe), "--set", "train.lr=1e-5", "--set", "loss.temperature=0.1")
    assert code == 2 and err.count("\n") == 1
    assert "train.lr: 3e-05 -> 1e-05" in err and "loss.temperature: None -> 0.1" in err and "--overwrite" in err
    assert (tmp_path / "run" / "recipe.json").read_text() == recorded


def test_an_unchanged_rerun_trains_nothing_and_rewrites_nothing(recipe, tmp_path, capsys) -> None:
    assert train(capsys, str(recipe))[0] == 0
    files = {path: path.stat().st_mtime_ns for path in (tmp_path / "run").rglob("*") if path.is_file()}
    code, out, _ = train(capsys, str(recipe))
    assert code == 0 and out.splitlines()[0] == f"nothing to train: the run in {tmp_path / 'run'} had finished its 2 steps"
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "run").rglob("*") if path.is_file()} == files


def test_overwrite_starts_the_run_again(recipe, tmp_path, capsys) -> None:
    assert train(capsys, str(recipe))[0] == 0
    code, out, _ = train(capsys, str(recipe), "--set", "train.max_steps=1", "--overwrite")
    assert code == 0 and out.splitlines()[0] == "trained 1 steps"
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["train"]["max_steps"] == 1


def test_the_summary_names_only_folders_that_exist(recipe, tmp_path, capsys) -> None:
    code, out, _ = train(capsys, str(recipe))  # no [eval]: there is no best model
    assert code == 0 and f"models in {tmp_path / 'run' / 'final'}" in out and "best" not in out
    assert not (tmp_path / "run" / "best").exists()
