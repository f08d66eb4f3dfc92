"""``embedkit index | search | mine`` end to end on the tiny model."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from conftest import TINY_TEXTS, held_elsewhere

from embedkit.cli import main
from embedkit.index.folder import current_folder, writer_lock

DOCS = [
    {"_id": "a", "title": "Cats", "text": "the cat sat on the mat"},
    {"_id": "b", "title": "", "text": "a dog runs in the park"},
    {"_id": "c", "text": "the sun rises in the east"},
    {"_id": "d", "text": "rain falls on the green hills"},
    {"_id": "e", "text": "she plays the piano every evening"},
    {"_id": "f", "text": "he reads a book about old ships"},
    {"_id": "g", "text": "the train leaves at noon"},
    {"_id": "h", "text": "children build a castle of sand"},
]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def corpus(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", DOCS[:6])
    write_jsonl(tmp_path / "more.jsonl", DOCS[6:])
    return tmp_path


@pytest.mark.parametrize("spec", ["torch", "faiss:HNSW8", "faiss:BFlat,rescore=4"])
def test_build_search_add_remove_info(capsys, tiny_model_path, corpus, spec) -> None:
    index = corpus / "idx"
    code, out, _ = run(
        capsys,
        "index",
        "build",
        "--model",
        tiny_model_path,
        "--corpus",
        corpus / "corpus.jsonl",
        "--out",
        index,
        "--spec",
        spec,
        "--precision",
        "fp32",
        "--json",
    )
    assert code == 0 and json.loads(out)["count"] == 6 and json.loads(out)["spec"] == spec

    code, out, _ = run(capsys, "search", index, "the cat sat on the mat", "-k", "3", "--precision", "fp32", "--json")
    hits = json.loads(out)
    assert code == 0 and [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == "a" and hits[0]["text"] == "Cats the cat sat on the mat"
    code, out, _ = run(capsys, "search", index, "the cat sat on the mat", "-k", "2")
    assert code == 0 and out.splitlines()[0].split()[:2] == ["1", "a"]

    code, out, _ = run(capsys, "index", "add", index, "--corpus", corpus / "more.jsonl", "--json")
    assert code == 0 and json.loads(out) == {"index": str(index), "added": 2, "count": 8}
    (corpus / "ids.txt").write_text("a\n\nb\n")
    code, out, _ = run(capsys, "index", "remove", index, "--ids", corpus / "ids.txt", "--json")
    assert code == 0 and json.loads(out)["count"] == 6

    code, out, _ = run(capsys, "index", "info", index, "--json")
    info = json.loads(out)
    assert code == 0 and info["count"] == 6 and info["model"]["name"] == str(tiny_model_path)
    code, out, _ = run(capsys, "index", "info", index)
    assert code == 0 and "count             6" in out

    write_jsonl(
        corpus / "queries.jsonl", [{"_id": "q1", "text": "the train leaves"}, {"_id": "q2", "text": "sand castle"}]
    )
    code, out, _ = run(
        capsys,
        "search",
        index,
        "--queries",
        corpus / "queries.jsonl",
        "-k",
        "10",
        "--output",
        corpus / "run.jsonl",
        "--json",
    )
    run_rows = [json.loads(line) for line in (corpus / "run.jsonl").read_text().splitlines()]
    assert code == 0 and json.loads(out)["queries"] == 2 and [row["query_id"] for row in run_rows] == ["q1", "q2"]
    assert all(len(row["ids"]) == 6 and "a" not in row["ids"] for row in run_rows)  # 6 documents left, padding dropped


def test_info_shows_the_quantization(capsys, tiny_model_path, corpus) -> None:
    index = corpus / "idx"
    spec = "faiss:BFlat,rescore=2,rescore_dtype=int8"
    argv = ["index", "build", "--model", tiny_model_path, "--corpus", corpus / "corpus.jsonl", "--out", index]
    assert run(capsys, *argv, "--spec", spec, "--precision", "fp32")[0] == 0
    code, out, _ = run(capsys, "index", "info", index)
    assert code == 0 and "quantization      codes=binary, bits_per_dimension=1, code_bytes=4" in out
    assert "rescore           factor=2, dtype=int8, file=rescore.safetensors" in out and "ranges" not in out
    code, out, _ = run(capsys, "index", "info", index, "--json")
    assert code == 0 and len(json.loads(out)["quantization"]["rescore"]["calibration"]["ranges"]) == 2


def test_errors_are_one_line(capsys, tiny_model_path, corpus) -> None:
    index = corpus / "idx"
    code, _, err = run(
        capsys,
        "index",
        "build",
        "--model",
        tiny_model_path,
        "--corpus",
        corpus / "corpus.jsonl",
        "--out",
        index,
        "--spec",
        "annoy",
    )
    assert code == 2 and "unknown index backend 'annoy'; valid names: bm25, faiss, hybrid, torch" in err
    code, _, err = run(
        capsys,
        "index",
        "build",
        "--model",
        tiny_model_path,
        "--corpus",
        corpus / "corpus.jsonl",
        "--out",
        index,
        "--spec",
        "faiss:IVF64,Flat",
    )
    assert code == 2 and "trains 64 IVF lists" in err and err.count("\n") == 1
    run(capsys, "index", "build", "--model", tiny_model_path, "--corpus", corpus / "corpus.jsonl", "--out", index)
    (corpus / "ids.txt").write_text("zzz\n")
    code, _, err = run(capsys, "index", "remove", index, "--ids", corpus / "ids.txt")
    assert code == 2 and "not in the index" in err
    (current_folder(index) / "vectors.safetensors").write_bytes(b"broken")
    code, _, err = run(capsys, "index", "info", index)
    assert code == 2 and "corrupt or truncated" in err
    code, _, err = run(capsys, "search", index)
    assert code == 2 and "give either a query text or --queries" in err


def test_bm25_and_hybrid_indexes(capsys, tiny_model_path, corpus) -> None:
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    lexical = corpus / "bm25"
    # no --model: BM25 embeds nothing, so no model is loaded (the default one is not asked for)
    code, out, _ = run(capsys, "index", "build", "--corpus", corpus / "corpus.jsonl", "--out", lexical, "--spec", "bm25",
                       "--json")
    assert code == 0 and json.loads(out)["model"] == {"name": "", "fingerprint": ""}
    code, out, _ = run(capsys, "search", lexical, "cats on a mat", "-k", "3", "--json")
    assert code == 0 and [hit["id"] for hit in json.loads(out)] == ["a"]  # BM25 returns what shares a word
    code, out, _ = run(capsys, "index", "add", lexical, "--corpus", corpus / "more.jsonl", "--json")
    assert code == 0 and json.loads(out)["count"] == 8
    code, out, _ = run(capsys, "search", lexical, "castles of sand", "-k", "3", "--json")
    assert code == 0 and [hit["id"] for hit in json.loads(out)] == ["h"]  # found in the rebuilt index
    code, out, _ = run(capsys, "index", "info", lexical)
    assert code == 0 and ["model", "none"] in [line.split() for line in out.splitlines()] and "backend=bm25" in out

    hybrid = corpus / "hybrid"
    spec = "hybrid:fusion=convex,alpha=0.5:faiss:Flat"
    code, out, _ = run(capsys, "index", "build", "--model", tiny_model_path, "--corpus", corpus / "corpus.jsonl",
                       "--out", hybrid, "--spec", spec, "--precision", "fp32", "--json")
    assert code == 0 and json.loads(out)["spec"] == spec and json.loads(out)["backend"]["fusion"] == "convex"
    code, out, _ = run(capsys, "search", hybrid, "the cat sat on the mat", "-k", "3", "--precision", "fp32", "--json")
    hits = json.loads(out)
    assert code == 0 and len(hits) == 3 and hits[0]["id"] == "a" and hits[0]["score"] == pytest.approx(1.0)
    write_jsonl(corpus / "queries.jsonl", [{"_id": "q1", "text": "the cat sat"}, {"_id": "q2", "text": "a dog runs in the park"}])
    code, _, _ = run(capsys, "search", hybrid, "--queries", corpus / "queries.jsonl", "-k", "2", "--output",
                     corpus / "run.jsonl")
    run_rows = [json.loads(line) for line in (corpus / "run.jsonl").read_text().splitlines()]
    assert code == 0 and [row["ids"][0] for row in run_rows] == ["a", "b"]

    code, _, err = run(capsys, "index", "build", "--model", tiny_model_path, "--corpus", corpus / "corpus.jsonl",
                       "--out", corpus / "bad", "--spec", "hybrid:fusion=max:torch")
    assert code == 2 and err.count("\n") == 1 and "unknown fusion 'max'; valid: rrf, convex" in err
    code, _, err = run(capsys, "index", "build", "--corpus", corpus / "corpus.jsonl", "--out", corpus / "bad",
                       "--spec", "bm25:k1=-2")
    assert code == 2 and err.count("\n") == 1 and "option k1 must be a number >= 0" in err


def build(capsys, tiny_model_path, corpus) -> object:
    index = corpus / "idx"
    code, _, _ = run(
        capsys, "index", "build", "--model", tiny_model_path, "--corpus", corpus / "corpus.jsonl", "--out", index
    )
    assert code == 0
    return index


def test_an_index_of_a_fine_tuned_model_searches_with_that_model(capsys, tiny_model_path, corpus, monkeypatch) -> None:
    """A saved fine-tuned model keeps its base model's name; the index records where its weights are, so that
    `search` without --model loads them (the README's quickstart path), from any working directory."""
    import torch

    from embedkit.encoders import load_encoder

    tuned = load_encoder(tiny_model_path, precision="fp32")
    with torch.no_grad():
        next(tuned.model.parameters()).add_(0.5)  # other weights, as training gives
    tuned.save(corpus / "runs" / "best")
    assert load_encoder(corpus / "runs" / "best").name == str(tiny_model_path)  # the base model's name
    monkeypatch.chdir(corpus)
    code, _, _ = run(capsys, "index", "build", "--model", "runs/best", "--corpus", "corpus.jsonl", "--out", "idx",
                     "--precision", "fp32")
    assert code == 0
    monkeypatch.chdir(corpus / "runs")
    code, out, err = run(capsys, "search", corpus / "idx", "the cat sat on the mat", "-k", "1", "--precision", "fp32",
                         "--json")
    assert code == 0, err
    assert json.loads(out)[0]["id"] == "a"
    code, out, _ = run(capsys, "index", "info", corpus / "idx", "--json")
    assert json.loads(out)["model"]["name"] == str((corpus / "runs" / "best").resolve())


def test_concurrent_adds_lose_nothing(capsys, tiny_model_path, corpus) -> None:
    """Two `index add` runs at once (threads here: the lock is per open file, so they exclude each other as two
    processes would; tests/unit/index/test_index_concurrency.py runs processes)."""
    index = build(capsys, tiny_model_path, corpus)
    write_jsonl(corpus / "one.jsonl", [{"_id": f"x{i}", "text": f"the cat {i}"} for i in range(5)])
    codes: list[int] = []
    adds = [
        threading.Thread(
            target=lambda name=name: codes.append(
                main(["index", "add", str(index), "--corpus", str(corpus / name), "--json"])
            )
        )
        for name in ("one.jsonl", "more.jsonl")
    ]
    for thread in adds:
        thread.start()
    for thread in adds:
        thread.join()
    capsys.readouterr()
    code, out, _ = run(capsys, "index", "info", index, "--json")
    assert codes == [0, 0] and code == 0 and json.loads(out)["count"] == 6 + 5 + 2


def test_a_locked_index_is_a_one_line_error(capsys, tiny_model_path, corpus) -> None:
    index = build(capsys, tiny_model_path, corpus)
    with held_elsewhere(writer_lock(index)):
        (corpus / "ids.txt").write_text("a\n")
        code, _, err = run(capsys, "index", "remove", index, "--ids", corpus / "ids.txt", "--lock-timeout", "0.2")
        assert code == 2 and err.count("\n") == 1
        assert f"index {index} is locked by another writer (pid {os.getpid()}" in err and "--lock-timeout" in err
        code, out, _ = run(capsys, "search", index, "the cat sat on the mat", "-k", "1", "--json")  # readers go on
        assert code == 0 and json.loads(out)[0]["id"] == "a"
    code, out, _ = run(capsys, "index", "remove", index, "--ids", corpus / "ids.txt", "--json")
    assert code == 0 and json.loads(out)["count"] == 5


def test_build_over_an_index_needs_overwrite(capsys, tiny_model_path, corpus) -> None:
    index = build(capsys, tiny_model_path, corpus)
    again = ["index", "build", "--model", tiny_model_path, "--corpus", corpus / "more.jsonl", "--out", index]
    code, out, err = run(capsys, *again)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{index} already holds an index; pass --overwrite to replace it" in err
    code, out, _ = run(capsys, "index", "info", index, "--json")
    assert json.loads(out)["count"] == 6 and json.loads(out)["version"] == "v-000001"  # untouched

    code, out, _ = run(capsys, *again, "--overwrite", "--json")
    assert code == 0 and json.loads(out)["count"] == 2
    code, out, _ = run(capsys, "index", "info", index, "--json")
    assert json.loads(out)["count"] == 2 and json.loads(out)["version"] == "v-000002"  # a new version, saved whole
    with held_elsewhere(writer_lock(index)):  # the replacement waits for other writers like any save
        code, _, err = run(capsys, *again, "--overwrite", "--lock-timeout", "0.2")
        assert code == 2 and "is locked by another writer" in err and err.count("\n") == 1

    (corpus / "mine").mkdir()
    (corpus / "mine" / "notes.txt").write_text("not an index")
    code, _, err = run(capsys, *again[:-1], corpus / "mine", "--overwrite")
    assert code == 2 and "refusing to replace" in err and (corpus / "mine" / "notes.txt").exists()


def test_build_tunes_search_and_shows_it(capsys, tiny_model_path, tmp_path) -> None:
    words = " ".join(TINY_TEXTS).split()  # the tiny model's vocabulary
    rng = np.random.default_rng(0)
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": " ".join(rng.choice(words, 5))} for i in range(400)])
    build = ["index", "build", "--model", tiny_model_path, "--corpus", tmp_path / "corpus.jsonl", "--spec",
             "faiss:IVF8,Flat", "--precision", "fp32"]
    code, out, _ = run(capsys, *build, "--out", tmp_path / "tuned")
    assert code == 0 and "search parameter nprobe=" in out and "40 of 400 documents as held-out queries" in out
    code, out, _ = run(capsys, "index", "info", tmp_path / "tuned", "--json")
    info = json.loads(out)
    tuning = info["search_tuning"]
    assert tuning["parameter"] == "nprobe" and tuning["reached"] and tuning["recall"] >= 0.95
    assert info["search_params"] == {"nprobe": tuning["value"]} == info["backend"]["search_params"]
    code, out, _ = run(capsys, "index", "info", tmp_path / "tuned")
    lines = {line[:17].strip(): line[17:].strip() for line in out.splitlines()}
    assert lines["search_params"] == f"nprobe={tuning['value']}"
    assert lines["search_tuning"].startswith(f"nprobe={tuning['value']}: recall@10 {tuning['recall']:.3f}")
    # --param overrides the tuned value for one search
    code, out, _ = run(capsys, "search", tmp_path / "tuned", "cat dog sun", "--param", "nprobe=8", "--json")
    assert code == 0 and len(json.loads(out)) == 10

    code, out, _ = run(capsys, *build, "--out", tmp_path / "plain", "--target-recall", "off", "--json")
    assert code == 0 and json.loads(out)["search_tuning"] is None and json.loads(out)["search_params"] == {}
    code, out, _ = run(capsys, "index", "info", tmp_path / "plain")
    assert "search_params     defaults" in out and "search_tuning     none" in out
    for value, message in [("1.5", "must be a number in (0, 1]"), ("high", "--target-recall takes a number")]:
        code, out, err = run(capsys, *build, "--out", tmp_path / "bad", "--target-recall", value)
        assert code == 2 and message in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_mine_triplets(capsys, tiny_model_path, corpus) -> None:
    pairs = [{"anchor": d["text"], "positive": d["text"].split()[-1] + " " + d["text"]} for d in DOCS[:4]]
    write_jsonl(corpus / "pairs.jsonl", pairs)
    code, out, _ = run(
        capsys,
        "mine",
        "--model",
        tiny_model_path,
        "--pairs",
        corpus / "pairs.jsonl",
        "--corpus",
        corpus / "corpus.jsonl",
        "--out",
        corpus / "triplets.jsonl",
        "--negatives",
        "2",
        "--range",
        "0:5",
        "--margin",
        "none",
        "--max-score",
        "0.9999",
        "--sampling",
        "random",
        "--json",
    )
    summary = json.loads(out)
    rows = [json.loads(line) for line in (corpus / "triplets.jsonl").read_text().splitlines()]
    assert code == 0 and summary["pairs"] == 4 and summary["triplets"] == len(rows) == 4 - summary["left_out"]
    assert all(len(row["negatives"]) == 2 and row["anchor"] not in row["negatives"] for row in rows)

    index = corpus / "idx"
    run(capsys, "index", "build", "--model", tiny_model_path, "--corpus", corpus / "corpus.jsonl", "--out", index)
    code, out, _ = run(
        capsys,
        "mine",
        "--model",
        tiny_model_path,
        "--pairs",
        corpus / "pairs.jsonl",
        "--index",
        index,
        "--out",
        corpus / "t2.jsonl",
        "--negatives",
        "1",
        "--range",
        "0:3",
        "--margin",
        "absolute:0.0",
    )
    assert code == 0 and out.startswith("wrote ")
    code, _, err = run(
        capsys,
        "mine",
        "--model",
        tiny_model_path,
        "--pairs",
        corpus / "pairs.jsonl",
        "--out",
        corpus / "t3.jsonl",
        "--range",
        "5",
    )
    assert code == 2 and "a rank range" in err


def test_mine_flags_are_step_tables() -> None:
    from embedkit.cli.mine import mining_filters
    from embedkit.mining.hard_negatives import DEFAULT_STEPS

    # the flags' defaults are mine_hard_negatives's defaults
    assert mining_filters("10:100", "relative:0.05", None) == [dict(table) for table in DEFAULT_STEPS]
    # in the order mining has always run them: margin, ceiling, then the window over what they left
    assert mining_filters("0:5", "absolute:0.1", 0.9) == [
        {"name": "margin", "mode": "absolute", "margin": 0.1},
        {"name": "ceiling", "max_score": 0.9},
        {"name": "rank-window", "start": 0, "end": 5},
    ]
    assert mining_filters("2:8", "none", None) == [{"name": "rank-window", "start": 2, "end": 8}]


def test_mine_flags_mine_what_the_python_steps_mine(capsys, tiny_model_path, corpus) -> None:
    from embedkit.encoders import load_encoder
    from embedkit.mining import mine_hard_negatives

    pairs = [(d["text"], d["text"].split()[-1] + " " + d["text"]) for d in DOCS[:4]]
    write_jsonl(corpus / "pairs.jsonl", [{"anchor": a, "positive": p} for a, p in pairs])
    flags = ["--negatives", "2", "--range", "1:6", "--margin", "absolute:0.0", "--max-score", "0.9999"]
    files = ["--pairs", corpus / "pairs.jsonl", "--corpus", corpus / "corpus.jsonl", "--out", corpus / "t.jsonl"]
    code, _, _ = run(capsys, "mine", "--model", tiny_model_path, "--precision", "fp32", *files, *flags)
    from_cli = [json.loads(line)["negatives"] for line in (corpus / "t.jsonl").read_text().splitlines()]
    steps = [
        {"name": "margin", "margin": 0.0, "mode": "absolute"},
        {"name": "ceiling", "max_score": 0.9999},
        {"name": "rank-window", "start": 1, "end": 6},
    ]
    encoder = load_encoder(tiny_model_path, precision="fp32")
    from_python = mine_hard_negatives(encoder, pairs, corpus / "corpus.jsonl", num_negatives=2, steps=steps)
    assert code == 0 and from_cli and from_cli == [list(row.negatives) for row in from_python]


def test_mine_reports_a_bad_margin_mode_once_as_python_does(capsys, tiny_model_path, corpus) -> None:
    from embedkit.encoders import load_encoder
    from embedkit.errors import ConfigError
    from embedkit.mining import mine_hard_negatives

    pairs = [(d["text"], d["text"].split()[-1] + " " + d["text"]) for d in DOCS[:4]]
    write_jsonl(corpus / "pairs.jsonl", [{"anchor": a, "positive": p} for a, p in pairs])
    mine = ["mine", "--model", tiny_model_path, "--pairs", corpus / "pairs.jsonl", "--out", corpus / "t.jsonl"]
    code, _, err = run(capsys, *mine, "--margin", "percent:0.05")
    with pytest.raises(ConfigError) as from_python:
        mine_hard_negatives(
            load_encoder(tiny_model_path), pairs, steps=[{"name": "margin", "margin": 0.05, "mode": "percent"}]
        )
    assert code == 2 and err == f"embedkit: error: {from_python.value}\n"
    assert err.count("unknown margin mode 'percent'") == 1 and "valid: absolute, relative" in err
    # the flags' own shape errors, and the steps' bounds, are one line too
    for flag, value, message in [
        ("--margin", "relative", "a margin looks like relative:0.05"),
        ("--margin", "relative:1.5", "filter 'margin': a relative margin must be in [0, 1), got 1.5"),
        ("--range", "10-100", "a rank range looks like 10:100"),
        ("--range", "50:10", "filter 'rank-window': a rank window needs 0 <= start < end, got 50:10"),
    ]:
        code, _, err = run(capsys, *mine, flag, value)
        assert code == 2 and message in err and err.count("\n") == 1


def test_prompts_for_documents_and_queries(capsys, prompted_model_path, corpus) -> None:
    from embedkit.encoders import load_encoder
    from embedkit.index import Index
    from embedkit.index.index import PromptMismatchWarning

    index = corpus / "idx"
    code, out, _ = run(capsys, "index", "build", "--model", prompted_model_path, "--corpus", corpus / "corpus.jsonl",
                       "--out", index, "--precision", "fp32", "--json")
    assert code == 0 and json.loads(out)["document_prompt"] == "passage: "
    code, out, _ = run(capsys, "index", "info", index)
    assert code == 0 and "document_prompt   'passage: '" in out
    encoder = load_encoder(prompted_model_path, device="cpu", precision="fp32")
    loaded = Index.load(index, encoder=encoder)
    for options, prompt in (((), "query: "), (("--prompt", ""), ""), (("--prompt-name", "document"), "passage: ")):
        code, out, _ = run(capsys, "search", index, "the cat sat", "-k", "6", "--precision", "fp32", *options, "--json")
        expected = loaded.search(encoder.encode(["the cat sat"], prompt=prompt), k=6)
        assert code == 0 and [hit["id"] for hit in json.loads(out)] == expected.ids[0].tolist()
    code, _, err = run(capsys, "search", index, "the cat sat", "--prompt-name", "passage")
    assert code == 2 and "unknown prompt name 'passage'; the model's prompts: document, query" in err
    with pytest.raises(SystemExit):
        main(["search", str(index), "the cat", "--prompt", "q: ", "--prompt-name", "query"])

    code, out, _ = run(capsys, "index", "build", "--model", prompted_model_path, "--corpus", corpus / "corpus.jsonl",
                       "--out", corpus / "plain", "--prompt", "", "--precision", "fp32", "--json")
    assert code == 0 and json.loads(out)["document_prompt"] == ""
    with pytest.warns(PromptMismatchWarning, match="built without a document prompt"):
        code, _, _ = run(capsys, "index", "add", corpus / "plain", "--corpus", corpus / "more.jsonl", "--json")
    assert code == 0
    added = Index.load(corpus / "plain", encoder=None)
    vectors = encoder.encode([DOCS[6]["text"]], prompt="", normalize=True)  # added after the recorded prompt: none
    scores, ids = added.search(vectors, k=1)
    assert ids[0, 0] == "g" and scores[0, 0] == pytest.approx(1.0, abs=1e-3)  # add ran in the default precision
