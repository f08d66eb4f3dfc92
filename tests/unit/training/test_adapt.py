"""embedkit adapt: split, train with mined negatives, choose on dev, score held-out test queries."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TEXTS

from embedkit.cli import main
from embedkit.data import read_beir
from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.training.adapt import adapt, adapt_config, adaptation_splits


@pytest.fixture
def collection(tmp_path):
    """A BEIR folder with one qrels file: 40 queries, each judging one of the tiny model's sentences."""
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [f"{text} {word}" for text in TINY_TEXTS for word in ("today", "again", "slowly", "at night", "here")]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n"
                                                 for i, t in enumerate(docs)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": " ".join(t.split()[1:4])}) + "\n"
                                                  for i, t in enumerate(docs)))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(docs))))
    return folder


def test_a_single_qrels_file_is_split_beside_the_run(collection, tmp_path) -> None:
    data = adaptation_splits(collection, tmp_path / "run", seed=1)
    assert data == tmp_path / "run" / "data"
    sizes = {split: len(read_beir(data, split).query_ids) for split in ("train", "dev", "test")}
    assert sizes == {"train": 28, "dev": 4, "test": 8}
    assert adaptation_splits(data, tmp_path / "other") == data  # train and dev qrels: used as they are


def test_several_qrels_without_train_and_dev_are_refused(collection, tmp_path) -> None:
    (collection / "qrels" / "dev.tsv").write_text((collection / "qrels" / "test.tsv").read_text())
    with pytest.raises(ConfigError, match="give it train and dev qrels"):
        adaptation_splits(collection, tmp_path / "run")


def test_the_recipe_evaluates_every_third_of_an_epoch_and_refreshes_every_epoch(collection, tmp_path) -> None:
    data = adaptation_splits(collection, tmp_path / "run")
    config = adapt_config(data, tmp_path / "run", "m", ["train.batch_size=4", "train.lr=1e-4"])
    assert config.train.save_steps == config.mining.refresh_steps == 7  # 28 pairs / 4
    assert config.train.eval_steps == 2
    one_step_an_epoch = adapt_config(data, tmp_path / "run", "m", ["train.batch_size=28"])
    assert one_step_an_epoch.train.eval_steps == one_step_an_epoch.train.save_steps == 1  # never 0 steps
    chosen = adapt_config(data, tmp_path / "run", "m", ["train.batch_size=4", "train.eval_steps=5"])
    assert chosen.train.eval_steps == 5
    assert config.eval.primary == "retrieval" and config.eval.retrieval_split == "dev"
    assert config.mining.negatives == 1 and config.train.interpolation == (0.25, 0.5, 0.75)
    assert config.train.lr == 1e-4 and config.model.name == "m"


def test_prompts_reach_the_recipe_and_both_test_scores(collection, prompted_model_path, tmp_path, monkeypatch) -> None:
    from embedkit.training import adapt as adapt_module

    data = adaptation_splits(collection, tmp_path / "run")
    config = adapt_config(data, tmp_path / "run", "m", ['data.prompts.anchor="search: "'])
    assert config.data.prompts == {"anchor": "search: "}
    scored = []
    monkeypatch.setattr(adapt_module, "run_training", lambda config, **_: None)  # the start model is enough here
    monkeypatch.setattr(adapt_module, "load_encoder", lambda *_, **__: load_encoder(prompted_model_path))
    monkeypatch.setattr(adapt_module.RetrievalEvaluator, "__call__", lambda self, encoder: scored.append(
        dict(encoder.prompts)) or {})
    adapt(collection, tmp_path / "run", str(prompted_model_path), overrides=['data.prompts.anchor="search: "'])
    # the start model is scored with the prompts it is trained with: the recipe's anchor prompt, its own document one
    assert scored[0] == {"query": "search: ", "document": "passage: "}


def test_adapt_end_to_end(collection, tiny_model_path, tmp_path, capsys) -> None:
    outcome = adapt(collection, tmp_path / "run", str(tiny_model_path), show_progress=False,
                    overrides=["train.batch_size=4", "train.epochs=1", "model.precision=\"fp32\""])
    run = outcome.run
    assert run.metric == "retrieval/ndcg@10" or run.metric == "ndcg@10"
    assert (tmp_path / "run" / "best" / "README.md").is_file()
    assert run.best_score >= run.first_eval[run.metric]  # never below the start on dev
    assert set(outcome.test_before) == set(outcome.test_after) and "ndcg@10" in outcome.test_after

    code = main(["adapt", "--data", str(collection), "--out", str(tmp_path / "cli"), "--model", str(tiny_model_path),
                 "--set", "train.batch_size=4", "--set", "train.epochs=1", "--set", "model.precision=\"fp32\""])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[-1].startswith("test ndcg@10 on held-out queries: ")
    assert lines[-2].startswith("test recall@100 on held-out queries: ")


def test_cli_adapt_json_states_the_scale(monkeypatch, capsys, tmp_path) -> None:
    from embedkit.training import adapt as adapt_module
    from embedkit.training.adapt import AdaptResult
    from embedkit.training.fit import FitResult

    scores = {"ndcg@10": 30.0, "recall@100": 90.0}
    run = FitResult(steps=3, output_dir=tmp_path, best_score=31.0, best_step=3, metric="ndcg@10",
                    first_eval=scores, last_eval=scores)
    monkeypatch.setattr(adapt_module, "adapt", lambda *args, **kwargs: AdaptResult(run, tmp_path, scores, scores))
    assert main(["adapt", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["scale"], document["unscaled"]) == (100, []) and document["test_after"] == scores
