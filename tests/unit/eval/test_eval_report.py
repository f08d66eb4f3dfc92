"""The report: suites, the shared encoding cache, report.json / report.md / plots, --compare, training logs, CLI."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
from conftest import REPO_ROOT, TINY_TEXTS

from embedkit.cli import main
from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.errors import ConfigError, DataError
from embedkit.eval import GeometryEvaluator, STSEvaluator
from embedkit.eval.plots import training_curves
from embedkit.eval.report import (
    CachedEncoder,
    ModelReport,
    build_evaluators,
    markdown_table,
    model_labels,
    read_log,
    read_suite,
    resolve_model,
    run_report,
)
from embedkit.types import TextEncoder

pytest.importorskip("matplotlib")  # the optional 'eval' extra draws the plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture()
def data(tmp_path):
    """An STS file, a preference file and a BEIR folder made of the tiny model's words."""
    pairs = list(itertools.combinations(TINY_TEXTS, 2))
    write_jsonl(tmp_path / "sts.jsonl", [
        {"sentence1": a, "sentence2": b, "score": (i * 7) % 11 / 2} for i, (a, b) in enumerate(pairs)
    ])
    write_jsonl(tmp_path / "pref.jsonl", [
        {"prompt": a, "chosen": a + " every evening", "rejected": b}
        for a, b in zip(TINY_TEXTS, TINY_TEXTS[1:], strict=False)
    ])
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(TINY_TEXTS)])
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": t.split()[1]} for i, t in enumerate(TINY_TEXTS)])
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(TINY_TEXTS))))
    return tmp_path


def write_suite(folder, text: str):
    (folder / "suite.toml").write_text(text)
    return folder / "suite.toml"


def test_read_suite_resolves_paths_and_options(data) -> None:
    suite = read_suite(write_suite(data, """
[sts]
dev = "sts.jsonl"
[retrieval]
small = { path = "beir", k = 10, recall_at = [1, 10], index_spec = "faiss:Flat" }
[geometry]
dev = { path = "sts.jsonl", sentences = "sts.jsonl", max_sentences = 5 }
"""))
    by_key = {entry.key: entry for entry in suite.entries}
    assert by_key["sts/dev"].options == {"path": data / "sts.jsonl"}
    assert by_key["retrieval/small"].options == {"folder": data / "beir", "k": 10, "recall_at": [1, 10],
                                                 "index_spec": "faiss:Flat"}
    assert by_key["geometry/dev"].options["sentences"] == data / "sts.jsonl" and suite.mteb is None


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ('[sts]\ndev = "nope.jsonl"\n', DataError,
         r"nope.jsonl: no such file or folder \(named by \[sts\] dev in .*suite.toml\)"),
        ('[geometry]\ng = { path = "sts.jsonl", sentences = "gone.txt" }\n', DataError, r"gone.txt: no such file"),
        ('[mteb]\ntasks = ["X"]\nlocal_tasks = "gone.toml"\n', DataError, r"gone.toml: no such file or folder"),
        ('[stss]\ndev = "sts.jsonl"\n', ConfigError, r"unknown sections stss; valid: sts, retrieval"),
        ('[sts]\ndev = { path = "sts.jsonl", colour = 1 }\n', ConfigError,
         r"\[sts\] dev in .*: unknown options colour; valid: path, batch_size, columns"),
        ('[retrieval]\nx = { k = 10 }\n', ConfigError, r"\[retrieval\] x in .*: needs a path"),
        ('[mteb]\ntasks = []\n', ConfigError, r"tasks must be a non-empty list"),
        ('[mteb]\ntasks = ["X"]\nlocal = "t.toml"\n', ConfigError,
         r"unknown keys local; valid: local_tasks, source, tasks"),
        ('', ConfigError, r"declares no evaluation"),
        ('[sts\n', ConfigError, r"suite.toml: "),
    ],
)
def test_bad_suites(data, text, error, message) -> None:
    with pytest.raises(error, match=message) as raised:
        read_suite(write_suite(data, text))
    assert "\n" not in str(raised.value)


def test_missing_suite_file(tmp_path) -> None:
    with pytest.raises(DataError, match="no such suite file"):
        read_suite(tmp_path / "suite.toml")


def test_geometry_defaults_to_the_first_sts_file(data) -> None:
    evaluators = build_evaluators(read_suite(write_suite(data, '[sts]\ndev = "sts.jsonl"\n')))
    assert isinstance(evaluators["sts/dev"], STSEvaluator) and isinstance(evaluators["geometry/dev"], GeometryEvaluator)


class CountingEncoder:
    dim = 2

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts, batch_size: int = 32, prompt: str | None = None, **kwargs) -> np.ndarray:
        texts = [(prompt or "") + text for text in texts]
        self.seen += texts
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_cached_encoder_embeds_each_text_once() -> None:
    inner = CountingEncoder()
    cached = CachedEncoder(inner)
    first = cached.encode(["a", "bb", "a"])
    second = cached.encode(["bb", "ccc"], normalize=True)
    assert inner.seen == ["a", "bb", "ccc"] and cached.dim == 2
    np.testing.assert_allclose(first, [[1, 1], [2, 1], [1, 1]])
    np.testing.assert_allclose(np.linalg.norm(second, axis=1), 1, rtol=1e-6)
    assert cached.encode([]).shape == (0, 2)


def test_cached_encoder_embeds_each_text_once_per_prompt() -> None:
    inner = CountingEncoder()
    cached = CachedEncoder(inner)
    cached.encode(["a", "bb"])
    with_prompt = cached.encode(["a", "bb"], prompt="q: ")
    cached.encode(["bb"], prompt="q: ")
    assert inner.seen == ["a", "bb", "q: a", "q: bb"]
    np.testing.assert_allclose(with_prompt, [[4, 1], [5, 1]])


def test_cached_encoder_satisfies_the_text_encoder_protocol(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, device="cpu", precision="fp32")
    cached = CachedEncoder(encoder)
    assert isinstance(cached, TextEncoder)
    assert (cached.name, cached.dim, cached.max_seq_length) == (encoder.name, encoder.dim, encoder.max_seq_length)
    np.testing.assert_allclose(cached.encode(TINY_TEXTS[:3]), encoder.encode(TINY_TEXTS[:3]), atol=1e-6)


def test_markdown_table_puts_models_side_by_side() -> None:
    table = markdown_table([ModelReport("base", "m1", None, {"sts/a/spearman": 80.123, "x": 1.0, "p/n": 40}),
                            ModelReport("tuned", "m2", None, {"sts/a/spearman": 81.5, "p/n": 40})])
    assert table.splitlines() == [
        "| metric | base | tuned |",
        "| --- | ---: | ---: |",
        "| sts/a/spearman | 80.12 | 81.50 |",
        "| x | 1.00 |  |",
        "| p/n | 40 | 40 |",  # a count is no score: no decimals
    ]


def make_run(folder, model_path):
    """A training run folder as fit() leaves it: log.jsonl and best/."""
    shutil.copytree(model_path, folder / "best")
    write_jsonl(folder / "log.jsonl", [
        {"step": 0, "eval": {"spearman": 10.0, "alignment": 0.5}},
        {"step": 1, "epoch": 0, "loss": 2.0, "lr": 1e-5, "elapsed_s": 0.1},
        {"step": 2, "epoch": 0, "loss": 1.5, "lr": 1e-5, "elapsed_s": 0.2},
        {"step": 2, "eval": {"spearman": 12.0, "alignment": 0.4}},
    ])
    return folder


def test_report_compares_models_and_plots_a_training_run(data, tiny_model_path, tmp_path) -> None:
    suite = write_suite(data, """
[sts]
dev = "sts.jsonl"
[retrieval]
small = { path = "beir", k = 10, recall_at = [1, 10] }
[preference]
pairs = { path = "pref.jsonl" }
""")
    run = make_run(tmp_path / "run", tiny_model_path)
    other = build_tiny_model(tmp_path / "other", TINY_TEXTS, seed=1)
    document = run_report([str(run), str(other)], suite, tmp_path / "report")

    out = tmp_path / "report"
    assert json.loads((out / "report.json").read_text()) == document
    first, second = document["models"]
    assert first["model"] == str(run / "best") and first["log"] == str(run / "log.jsonl") and second["log"] is None
    expected = {"sts/dev/spearman", "retrieval/small/ndcg@10", "retrieval/small/mrr@10",
                "retrieval/small/recall@1", "retrieval/small/recall@10", "retrieval/small/map@10",
                "preference/pairs/accuracy", "geometry/dev/alignment", "geometry/dev/uniformity",
                "geometry/dev/anisotropy"}
    assert expected <= set(first["metrics"]) and set(first["metrics"]) == set(second["metrics"])
    assert first["metrics"] != second["metrics"]
    # one file's Spearman is reported once, under one name
    assert [name for name in first["metrics"] if name.startswith("sts/")] == ["sts/dev/spearman"]
    # scores x100, and the metrics in units of their own named; counts are integers
    assert document["scale"] == 100 and document["unscaled"] == [
        "geometry/dev/alignment", "geometry/dev/anisotropy", "geometry/dev/uniformity", "preference/pairs/log_loss",
        "preference/pairs/mean_margin", "preference/pairs/n", "preference/pairs/ties"]
    assert first["metrics"]["preference/pairs/n"] == 7 and type(first["metrics"]["preference/pairs/n"]) is int
    assert document["plots"] == ["sts_scatter.png", "alignment_uniformity.png", "training.png"]
    for name in document["plots"]:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    markdown = (out / "report.md").read_text()
    assert f"| metric | {tmp_path.name}/run | {tmp_path.name}/other |" in markdown
    assert "| preference/pairs/n | 7 | 7 |" in markdown and "Scores x100" in markdown
    assert first["label"] == f"{tmp_path.name}/run" and "![training](training.png)" in markdown


SHIPPED_SUITE = REPO_ROOT / "recipes" / "suite.toml"


def test_the_shipped_suite_reads_and_runs(tiny_model_path, tmp_path) -> None:
    pytest.importorskip("mteb")
    suite = read_suite(SHIPPED_SUITE)
    assert [entry.key for entry in suite.entries] == [
        "sts/quickstart", "retrieval/quickstart", "preference/quickstart", "geometry/quickstart"]
    assert suite.mteb is not None and suite.mteb.source == "local" and len(suite.mteb.tasks) == 2

    document = run_report([str(tiny_model_path)], SHIPPED_SUITE, tmp_path / "report")
    metrics = document["models"][0]["metrics"]
    assert {"sts/quickstart/spearman", "retrieval/quickstart/ndcg@10", "preference/quickstart/accuracy",
            "geometry/quickstart/uniformity", "mteb/sts/cosine_spearman", "mteb/retrieval/ndcg_at_10",
            "mteb/mean"} <= set(metrics)
    assert metrics["preference/quickstart/n"] == 40 and document["scale"] == 100
    assert document["plots"] == ["sts_scatter.png", "alignment_uniformity.png"]


def test_report_with_mteb_tasks(data, tiny_model_path, tmp_path) -> None:
    pytest.importorskip("mteb")
    suite = write_suite(data, '[mteb]\ntasks = ["sts.jsonl"]\nsource = "local"\n')
    assert read_suite(suite).mteb.tasks == (str(data / "sts.jsonl"),)  # relative to the suite
    document = run_report([str(tiny_model_path)], suite, tmp_path / "report")
    metrics = document["models"][0]["metrics"]
    assert set(metrics) == {"mteb/sts/cosine_spearman", "mteb/mean"} and document["plots"] == []
    assert list((tmp_path / "report" / "mteb" / "results").rglob("sts.json"))  # mteb's result layout


def test_run_folders_and_logs(tmp_path, tiny_model_path) -> None:
    run = make_run(tmp_path / "run", tiny_model_path)
    assert resolve_model(str(run)) == (str(run / "best"), run / "log.jsonl")
    assert resolve_model(str(run / "best")) == (str(run / "best"), run / "log.jsonl")  # a run's model brings its log
    assert resolve_model(str(tiny_model_path)) == (str(tiny_model_path), None)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.jsonl").write_text("")
    with pytest.raises(DataError, match="a training run folder without a best or final/ model"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="gone.jsonl: no such training log"):
        resolve_model(str(tiny_model_path), tmp_path / "gone.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"loss": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a training log record"):
        read_log(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"step": 1\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: not JSON"):
        read_log(tmp_path / "bad.jsonl")


def test_model_labels_are_short_unless_ambiguous(tmp_path) -> None:
    (tmp_path / "a" / "best").mkdir(parents=True)
    (tmp_path / "b" / "best").mkdir(parents=True)
    assert model_labels(["org/model", str(tmp_path / "a" / "best")]) == ["org/model", "a/best"]
    assert model_labels([str(tmp_path / "a" / "best"), "a/best"]) == [str(tmp_path / "a" / "best"), "a/best"]


def test_training_curves_overlay_runs() -> None:
    logs = {"a": [{"step": 1, "loss": 1.0}, {"step": 1, "eval": {"spearman": 3.0}}],
            "b": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]}
    figure = training_curves(logs)
    loss_panel, spearman_panel = figure.axes[:2]
    assert [line.get_label() for line in loss_panel.lines] == ["a", "b"] and len(spearman_panel.lines) == 1


def test_cli_report_and_its_errors(capsys, data, tiny_model_path, tmp_path) -> None:
    suite = write_suite(data, '[sts]\ndev = "sts.jsonl"\n')
    code = main(["eval", "all", "--model", str(tiny_model_path), "--suite", str(suite), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "| sts/dev/spearman |" in out and "sts_scatter.png, alignment_uniformity.png" in out

    suite = write_suite(data, '[sts]\ndev = "sts.jsonl"\ntest = "missing/test.jsonl"\n')
    code = main(["eval", "all", "--model", str(tiny_model_path), "--suite", str(suite), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "missing/test.jsonl: no such file or folder (named by [sts] test" in err
