"""Recipes: TOML, overrides and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.errors import ConfigError, EmbedkitError
from embedkit.training.fit import FitSettings
from embedkit.training.recipe import RunConfig, config_from_dict, config_to_dict, load_config, parse_override

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_recipe_with_overrides(tmp_path) -> None:
    recipe = write(tmp_path, '[data]\npath = "a.txt"\n[loss]\nname = "simcse-unsup"\ntemperature = 0.1\n[train]\nlr = 1e-5\n')
    config = load_config(recipe, ["data.path=b.txt", "train.lr=2e-5", "train.max_steps=7", "loss.symmetric=true",
                                  "model.pooling=cls"])
    assert config.data.path == "b.txt"
    assert config.train.lr == 2e-5 and config.train.max_steps == 7
    assert config.loss.name == "simcse-unsup" and config.loss.params == {"temperature": 0.1, "symmetric": True}
    assert config.model.pooling == "cls"
    assert config_to_dict(config)["loss"] == {"name": "simcse-unsup", "temperature": 0.1, "symmetric": True}


def test_override_values_are_toml_literals() -> None:
    assert parse_override("train.seed=3") == (["train", "seed"], 3)
    assert parse_override("data.path=../x/y.txt") == (["data", "path"], "../x/y.txt")
    assert parse_override('data.columns={premise = "anchor"}') == (["data", "columns"], {"premise": "anchor"})


@pytest.mark.parametrize("text,match", [
    ("[trian]\nlr = 1\n", "unknown recipe section trian; valid sections: model, data, loss, train, eval"),
    ("[train]\nlearning_rate = 1\n", "unknown key train.learning_rate; valid keys: "),
    ("[train\n", "invalid TOML"),
])
def test_bad_recipes(tmp_path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_bad_override_and_missing_recipe(tmp_path) -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(write(tmp_path, ""), ["lr=1"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match=r"'train.lr.x=1': train.lr = 1e-05 is a value, not a table"):
        load_config(write(tmp_path, "[train]\nlr = 1e-5\n"), ["train.lr.x=1"])
    with pytest.raises(ConfigError, match=r"'train.lr=1': train = 5 is a value, not a table"):
        load_config(write(tmp_path, "train = 5\n"), ["train.lr=1"])


# Each bad value is one line naming the key, the value and what is allowed (TOML as a recipe file writes it).
BAD_VALUES = [
    ("[train]\nlr = -1e-3", "train.lr = -0.001 is invalid: expected a finite number above 0"),
    ("[train]\nlr = nan", "train.lr = nan is invalid: expected a finite number above 0"),
    ("[train]\nlr = inf", "train.lr = inf is invalid: expected a finite number above 0"),
    ('[train]\nlr = "fast"', 'train.lr = "fast" is invalid: expected a finite number above 0'),
    ("[train]\nlr = true", "train.lr = true is invalid: expected a finite number"),
    ("[train]\nbatch_size = 8.5", "train.batch_size = 8.5 is invalid: expected an integer of at least 2"),
    ("[train]\nbatch_size = 1", "train.batch_size = 1 is invalid: expected an integer of at least 2"),
    ("[train]\nlog_steps = 0", "train.log_steps = 0 is invalid: expected an integer of at least 1"),
    ("[train]\nsave_steps = 0", "train.save_steps = 0 is invalid: expected an integer of at least 1"),
    ("[train]\neval_steps = -1", "train.eval_steps = -1 is invalid: expected an integer of at least 1"),
    ("[train]\nmax_steps = 0", "train.max_steps = 0 is invalid: expected an integer of at least 1"),
    ("[train]\nmax_steps = -3", "train.max_steps = -3 is invalid: expected an integer of at least 1"),
    ("[train]\nepochs = 0", "train.epochs = 0 is invalid: expected an integer of at least 1"),
    ("[train]\nwarmup_ratio = 5.0", "train.warmup_ratio = 5.0 is invalid: expected a finite number from 0 to 1"),
    ("[train]\nweight_decay = -0.1", "train.weight_decay = -0.1 is invalid: expected a finite number of at least 0"),
    ("[train]\nmax_grad_norm = 0", "train.max_grad_norm = 0 is invalid: expected a finite number above 0"),
    ("[train]\nmax_seq_length = -5", "train.max_seq_length = -5 is invalid: expected an integer of at least 1"),
    ("[train]\nmini_batch_size = 0", "train.mini_batch_size = 0 is invalid: expected an integer of at least 1"),
    ("[train]\ninterpolation = [0.5, 1.0]",
     r"train.interpolation = \[0.5, 1.0\] is invalid: expected a list of finite numbers each strictly between 0 and 1"),
    ('[train]\nresume = "yes"', 'train.resume = "yes" is invalid: expected true or false'),
    ("[train]\noutput_dir = 3", "train.output_dir = 3 is invalid: expected a string or a path"),
    ("train = 5", r"recipe section train = 5 is invalid: expected a table \(\[train\] followed by key = value"),
    ("[model]\nmax_seq_length = 0", "model.max_seq_length = 0 is invalid: expected an integer of at least 1"),
    ('[model]\nprecision = "fp8"', 'model.precision = "fp8" is invalid: expected a string naming one of: auto, fp32'),
    ('[model]\npooling = "max"', 'model.pooling = "max" is invalid: expected a string naming one of: cls, mean, last'),
    ('[model]\ndevice = "gpu0"', 'model.device = "gpu0" is invalid: '),
    ("[model]\nmlp_head = 1", "model.mlp_head = 1 is invalid: expected true or false"),
    ('[data]\nkind = "words"', 'data.kind = "words" is invalid: expected a string naming one of: sentences, pairs'),
    ('[data]\nformat = "xml"', 'data.format = "xml" is invalid: expected a string naming one of: jsonl, json'),
    ("[data]\nlimit = 0", "data.limit = 0 is invalid: expected an integer of at least 1"),
    ("[data]\ncolumns = { premise = 1 }", 'data.columns = {"premise": 1} is invalid: expected a table of strings'),
    ("[data]\npath = [\"a.txt\"]", r'data.path = \["a.txt"\] is invalid: expected a string'),
    ('[data]\nprompts = { query = "q: " }',
     'data.prompts = {"query": "q: "} is invalid: expected a table of strings keyed by anchor, positive, negative'),
    ("[data]\nprompts = { anchor = 1 }", 'data.prompts = {"anchor": 1} is invalid: expected a table of strings'),
    ('[data]\nprompts = "query: "', 'data.prompts = "query: " is invalid: expected a table of strings'),
    ('[eval]\nsts = "a.jsonl"\nprimary = "mteb"',
     'eval.primary = "mteb" is invalid: expected a string naming one of: sts, retrieval, preference'),
    ("[mining]\nnegatives = -1", "mining.negatives = -1 is invalid: expected an integer of at least 0"),
    ("[mining]\nrefresh_steps = 1.5", "mining.refresh_steps = 1.5 is invalid: expected an integer of at least 0"),
    ('[mining]\nspec = "annoy"', "mining.spec = \"annoy\" is invalid: unknown index backend 'annoy'; valid names: "),
    ('[mining]\nsteps = [{ name = "nearest" }]', "unknown filter step 'nearest'; valid names: "),
    ('[loss]\nname = "infonce"\ntemperature = "hot"', 'loss.temperature = "hot" is invalid: expected a finite number'),
    ('[loss]\nname = "infonce"\nsymmetric = "no"', 'loss.symmetric = "no" is invalid: expected true or false'),
    ('[loss]\nname = "infonce-queue"\nqueue_size = 2.5', "loss.queue_size = 2.5 is invalid: expected an integer"),
    ('[loss]\nname = "infonce"\nfilters = [{ name = "margin", mode = "both" }]',
     "loss.filters = .* is invalid: filter 'margin': unknown margin mode 'both'; valid: absolute, relative"),
    ('[loss]\nname = "infonce"\nparams = 3', "loss.params = 3 is invalid: expected a table"),
    ('[loss]\nname = "infonce"\nwarmth = 1', "loss 'infonce' has no parameter warmth; valid parameters: "),
    ('[loss]\nname = "nce"', "unknown loss 'nce'; valid names: "),
    ("[loss]\nmatryoshka_dims = []", r"loss.matryoshka_dims = \[\] is invalid: matryoshka_dims must name at least one"),
    ("[loss]\nmatryoshka_dims = [64, 0]", "loss.matryoshka_dims = .* is invalid: matryoshka_dims must be positive integers"),
    ("[loss]\nmatryoshka_dims = [64, 64]", "loss.matryoshka_dims = .* is invalid: matryoshka_dims names 64 more than once"),
    ("[loss]\nmatryoshka_dims = [64.5]", "loss.matryoshka_dims = .* is invalid: expected a list of integers that are"),
    ("[loss]\nmatryoshka_dims = 64", "loss.matryoshka_dims = 64 is invalid: expected a list of integers"),
    ("[loss]\nmatryoshka_dims = [64, 32]\nmatryoshka_weights = [1, -1]",
     "loss.matryoshka_weights = .* is invalid: matryoshka_weights must be numbers above 0, got -1.0"),
    ('[loss]\nmatryoshka_dims = [64, 32]\nmatryoshka_weights = ["1", 1]',
     "loss.matryoshka_weights = .* is invalid: expected a list of finite numbers each above 0"),
    ("[loss]\nmatryoshka_dims = [64, 32]\nmatryoshka_weights = [1]",
     "loss.matryoshka_weights = .* is invalid: matryoshka_weights gives 1 weight for 2 matryoshka_dims"),
    ("[loss]\nmatryoshka_weights = [1]", "loss.matryoshka_weights is set without loss.matryoshka_dims"),
]


@pytest.mark.parametrize(("text", "match"), BAD_VALUES, ids=[text.replace("\n", " ") for text, _ in BAD_VALUES])
def test_every_bad_recipe_value_is_a_one_line_error_at_load(tmp_path, text: str, match: str) -> None:
    with pytest.raises(EmbedkitError, match=match) as error:
        load_config(write(tmp_path, text + "\n"))
    assert "\n" not in str(error.value)


def test_values_are_converted_to_their_field_types(tmp_path) -> None:
    config = load_config(write(tmp_path, '[train]\nlr = 1\ninterpolation = [0.5]\n[loss]\nname = "infonce"\n'
                                         "temperature = 1\n"))
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.interpolation == (0.5,)
    assert config.loss.params == {"temperature": 1.0} and isinstance(config.loss.params["temperature"], float)


def test_a_config_built_in_python_is_checked_too(tmp_path) -> None:
    from dataclasses import replace

    from embedkit.training.recipe import run_training

    config = replace(RunConfig(), train=FitSettings(output_dir=tmp_path, log_steps=0))
    with pytest.raises(ConfigError, match="train.log_steps = 0 is invalid"):
        run_training(config)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", ["quickstart", "simcse-unsup", "simcse-sup"])
def test_shipped_recipes_load(name: str) -> None:
    config = load_config(REPO / "recipes" / f"{name}.toml")
    assert isinstance(config, RunConfig) and config.loss.params["temperature"] == 0.05


def test_matryoshka_keys_wrap_the_loss_and_are_recorded(tmp_path, tiny_model_path) -> None:
    from embedkit.losses import MatryoshkaLoss
    from embedkit.training.recipe import run_training

    config = load_config(REPO / "recipes" / "matryoshka.toml")
    assert config.loss.matryoshka_dims == (384, 256, 128, 64, 32) and config.loss.matryoshka_weights == (1.0,) * 5
    loss = config.loss.build()
    assert isinstance(loss, MatryoshkaLoss) and loss.dims == (384, 256, 128, 64, 32)
    assert config_to_dict(config)["loss"]["matryoshka_dims"] == (384, 256, 128, 64, 32)
    assert "matryoshka_dims" not in config_to_dict(load_config(REPO / "recipes" / "simcse-sup.toml"))["loss"]

    (tmp_path / "s.txt").write_text("".join(f"sentence number {i} about the cat\n" for i in range(8)))
    raw = {"model": {"name": str(tiny_model_path), "precision": "fp32"}, "data": {"path": str(tmp_path / "s.txt")},
           "loss": {"name": "simcse-unsup", "matryoshka_dims": [32, 8], "matryoshka_weights": [1, 2]},
           "train": {"output_dir": str(tmp_path / "run"), "batch_size": 4, "max_steps": 2, "show_progress": False}}
    assert run_training(config_from_dict(raw)).steps == 2
    recorded = json.loads((tmp_path / "run" / "recipe.json").read_text())["loss"]
    assert recorded == {"name": "simcse-unsup", "matryoshka_dims": [32, 8], "matryoshka_weights": [1.0, 2.0]}

    raw["loss"]["matryoshka_dims"], raw["train"]["output_dir"] = [64, 8], str(tmp_path / "wide")
    with pytest.raises(ConfigError, match=r"loss.matryoshka_dims = \[64, 8\] is invalid: 64 exceeds the 32 dimensions"):
        run_training(config_from_dict(raw))
    assert not (tmp_path / "wide").exists()  # refused before anything is written


def test_simcse_unsup_recipe_has_the_paper_settings() -> None:
    config = load_config(REPO / "recipes" / "simcse-unsup.toml")
    assert (config.train.batch_size, config.train.lr, config.train.max_seq_length) == (64, 3e-5, 32)
    assert config.model.mlp_head and config.train.eval_steps == 125


def test_retrieval_is_a_dev_metric_that_picks_the_best_model(tmp_path, tiny_model_path) -> None:
    from conftest import TINY_TEXTS, write_beir

    from embedkit.training.recipe import run_training

    folder = write_beir(tmp_path / "beir", {f"d{i}": ("", t) for i, t in enumerate(TINY_TEXTS)},
                        {f"q{i}": " ".join(t.split()[:3]) for i, t in enumerate(TINY_TEXTS)},
                        [(f"q{i}", f"d{i}", 1) for i in range(len(TINY_TEXTS))], splits=("train", "dev"))
    (tmp_path / "sts.jsonl").write_text("".join(
        json.dumps({"sentence1": TINY_TEXTS[i], "sentence2": TINY_TEXTS[i + 1], "score": i}) + "\n" for i in range(5)))
    raw = {
        "model": {"name": str(tiny_model_path), "precision": "fp32"},
        "data": {"path": str(folder)},
        "loss": {"name": "infonce"},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 4, "max_steps": 2, "eval_steps": 1,
                  "show_progress": False},
        "eval": {"sts": str(tmp_path / "sts.jsonl"), "retrieval": str(folder), "primary": "retrieval"},
    }
    result = run_training(config_from_dict(raw))
    assert result.metric == "retrieval/ndcg@10"
    evals = [record["eval"] for record in result.history if "eval" in record]
    assert len(evals) == 3 and all({"retrieval/ndcg@10", "sts/spearman"} <= set(e) for e in evals)
    assert result.best_score == max(e["retrieval/ndcg@10"] for e in evals)


def test_recipe_prompts_train_and_are_saved_with_the_model(tmp_path, tiny_model_path) -> None:
    from conftest import TINY_TEXTS
    from sentence_transformers import SentenceTransformer

    from embedkit.training.recipe import run_training

    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"anchor": " ".join(text.split()[:3]), "positive": text}) + "\n" for text in TINY_TEXTS))
    recipe = write(tmp_path, f"""
[model]
name = {json.dumps(str(tiny_model_path))}
precision = "fp32"
[data]
path = {json.dumps(str(tmp_path / "pairs.jsonl"))}
[data.prompts]
anchor = "query: "
positive = "passage: "
[train]
output_dir = {json.dumps(str(tmp_path / "run"))}
batch_size = 4
max_steps = 1
show_progress = false
""")
    config = load_config(recipe)
    assert config.data.prompts == {"anchor": "query: ", "positive": "passage: "}
    run_training(config)
    saved = SentenceTransformer(str(tmp_path / "run" / "final"), device="cpu")
    assert saved.prompts == {"query": "query: ", "document": "passage: "}
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["data"]["prompts"]["anchor"] == "query: "


def test_the_primary_dev_set_must_be_given() -> None:
    with pytest.raises(ConfigError, match="eval.primary is 'retrieval', but the recipe gives no eval.retrieval set"):
        config_from_dict({"eval": {"sts": "a.jsonl", "primary": "retrieval"}})


def test_mining_inside_training_refreshes_and_keeps_every_pair(tmp_path, tiny_model_path) -> None:
    from conftest import TINY_TEXTS

    from embedkit.training.negatives import load_mined
    from embedkit.training.recipe import run_training

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [*TINY_TEXTS, "the cat runs in the park", "a dog sat on the mat", "the sun falls on the hills"]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(docs)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": " ".join(t.split()[:3])}) + "\n"
                                                  for i, t in enumerate(TINY_TEXTS)))
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(TINY_TEXTS))))
    raw = {
        "model": {"name": str(tiny_model_path), "precision": "fp32"},
        "data": {"path": str(folder)},
        "loss": {"name": "infonce"},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 4, "max_steps": 4, "show_progress": False},
        "mining": {"negatives": 2, "refresh_steps": 2, "steps": [{"name": "rank-window", "start": 0, "end": 4}]},
    }
    result = run_training(config_from_dict(raw))
    n = len(TINY_TEXTS)
    mined = [record for record in result.history if "mined" in record]
    assert [record["step"] for record in mined] == [0, 2]
    assert [record["mined"] for record in mined] == [{"rows": n, "negatives": 2 * n, "short": 0, "in_batch_only": 0}] * 2
    step, rows = load_mined(tmp_path / "run", 3)
    assert step == 2 and len(rows) == len(TINY_TEXTS)
    for row, text in zip(rows, TINY_TEXTS, strict=True):
        assert text not in row.negatives and len(row.negatives) == 2  # never the pair's own positive

    # a ceiling no candidate passes: every pair stays, with in-batch negatives only
    raw["mining"] = {"negatives": 2, "steps": [{"name": "ceiling", "max_score": -2.0}]}
    raw["train"]["output_dir"] = str(tmp_path / "none")
    result = run_training(config_from_dict(raw))
    assert [r["mined"] for r in result.history if "mined" in r] == [
        {"rows": n, "negatives": 0, "short": n, "in_batch_only": n}]
    assert all(record["loss"] > 0 for record in result.history if "loss" in record)


def test_mining_needs_a_loss_that_takes_negatives(tmp_path) -> None:
    from embedkit.training.recipe import run_training

    (tmp_path / "s.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n' * 4)
    raw = {"data": {"path": str(tmp_path / "s.jsonl")}, "loss": {"name": "cosent"}, "mining": {"negatives": 1}}
    with pytest.raises(ConfigError, match="takes no hard negatives"):
        run_training(config_from_dict(raw))
