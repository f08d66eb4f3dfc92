"""Recipes: TOML, overrides and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedkit.training.recipe import RunConfig, config_to_dict, load_config, parse_override
from embedkit.errors import ConfigError

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


@pytest.mark.parametrize("name", ["quickstart", "simcse-unsup", "simcse-sup"])
def test_shipped_recipes_load(name: str) -> None:
    config = load_config(REPO / "recipes" / f"{name}.toml")
    assert isinstance(config, RunConfig) and config.loss.params["temperature"] == 0.05


def test_simcse_unsup_recipe_has_the_paper_settings() -> None:
    config = load_config(REPO / "recipes" / "simcse-unsup.toml")
    assert (config.train.batch_size, config.train.lr, config.model.max_seq_length) == (64, 3e-5, 32)
    assert config.model.mlp_head and config.train.eval_steps == 125
