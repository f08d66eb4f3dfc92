"""The embedkit command line, end to end on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_TEXTS

from embedkit.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_losses_lists_every_registered_loss(capsys) -> None:
    code, out, _ = run(capsys, "losses", "--json")
    entries = {e["name"]: e for e in json.loads(out)}
    assert code == 0 and {"infonce", "simcse-unsup", "simcse-sup"} <= set(entries)
    assert entries["simcse-unsup"]["parameters"]["temperature"] == 0.05
    assert "Gao et al., 2021" in entries["simcse-sup"]["reference"]
    assert entries["reward-bt"]["module"] == "embedkit.losses.preference"  # each loss lives in losses/
    assert {entry["module"].rsplit(".", 1)[0] for entry in entries.values()} == {"embedkit.losses"}
    code, out, _ = run(capsys, "losses")
    assert code == 0 and "simcse-unsup" in out


def test_encode_txt_and_jsonl(capsys, tiny_model_path, tmp_path) -> None:
    (tmp_path / "s.txt").write_text("the cat sat\na dog runs\n")
    code, out, _ = run(capsys, "encode", "--model", str(tiny_model_path), "--input", str(tmp_path / "s.txt"),
                       "--output", str(tmp_path / "e.npy"), "--normalize", "--json")
    embeddings = np.load(tmp_path / "e.npy")
    assert code == 0 and json.loads(out)["shape"] == [2, 32] and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, rtol=1e-5)

    (tmp_path / "s.jsonl").write_text('{"body": "the cat sat"}\n{"body": ""}\n')
    code, _, err = run(capsys, "encode", "--model", str(tiny_model_path), "--input", str(tmp_path / "s.jsonl"),
                       "--output", str(tmp_path / "f.npy"), "--column", "body")
    assert code == 2 and "s.jsonl:2:" in err and "body" in err


def test_eval_sts_json(capsys, tiny_model_path, tmp_path) -> None:
    rows = [("the cat sat", "the cat sat", 5.0), ("a dog runs", "the train leaves", 0.5), ("the sun", "the sun rises", 4)]
    (tmp_path / "sts.jsonl").write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n"
                                                for a, b, s in rows))
    code, out, _ = run(capsys, "eval", "sts", "--model", str(tiny_model_path), "--data", str(tmp_path / "sts.jsonl"),
                       "--json")
    result = json.loads(out)
    assert code == 0 and result["task"] == "sts" and -100 <= result["metrics"]["spearman"] <= 100
    assert result["metrics"].keys() == {"spearman"} and result["pairs"] == {"sts": 3}
    assert (result["scale"], result["unscaled"]) == (100, [])


def test_train_from_recipe_with_overrides(capsys, tiny_model_path, tmp_path) -> None:
    (tmp_path / "s.txt").write_text("".join(f"sentence number {i} about the cat\n" for i in range(12)))
    (tmp_path / "dev.jsonl").write_text("".join(
        json.dumps({"sentence1": TINY_TEXTS[i], "sentence2": TINY_TEXTS[i + 1], "score": i}) + "\n" for i in range(5)))
    (tmp_path / "r.toml").write_text('[loss]\nname = "simcse-unsup"\n[train]\nbatch_size = 4\nlog_steps = 1\n')
    code, out, _ = run(capsys, "train", str(tmp_path / "r.toml"), "--json",
                       "--set", f"model.name={json.dumps(str(tiny_model_path))}",
                       "--set", f"data.path={json.dumps(str(tmp_path / 's.txt'))}",
                       "--set", f"eval.sts={json.dumps(str(tmp_path / 'dev.jsonl'))}",
                       "--set", f"train.output_dir={json.dumps(str(tmp_path / 'run'))}",
                       "--set", "model.precision=fp32")
    summary = json.loads(out)
    assert code == 0 and summary["steps"] == 3 and summary["first_eval"] is not None
    assert (summary["scale"], summary["unscaled"]) == (100, [])
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["loss"]["name"] == "simcse-unsup"
    assert (tmp_path / "run" / "best" / "modules.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["losses-typo"], None),
    (["train", "missing.toml"], "recipe not found: missing.toml"),
])
def test_usage_errors(capsys, argv, message) -> None:
    if message is None:
        with pytest.raises(SystemExit):
            main(argv)
        return
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_loss_and_data_kind_mismatch(capsys, tmp_path) -> None:
    (tmp_path / "p.jsonl").write_text('{"anchor": "a", "positive": "b"}\n')
    (tmp_path / "r.toml").write_text(f'[data]\npath = {json.dumps(str(tmp_path / "p.jsonl"))}\n[loss]\nname = "simcse-sup"\n')
    code, _, err = run(capsys, "train", str(tmp_path / "r.toml"))
    assert code == 2 and "takes triplets, preference data" in err and "pairs" in err


def test_bad_data_is_one_line_without_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", "sentence2": "b", "score": "NaN"}\n')
    done = subprocess.run([sys.executable, "-m", "embedkit", "eval", "sts", "--data", str(bad)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:2:" in lines[0]


def test_reward_model_recipe_evaluates_preference_and_saves_a_loadable_reward_model(
    capsys, tiny_model_path, tmp_path
) -> None:
    from embedkit.encoders.reward import load_reward_model

    rows = [{"prompt": f"Human: question {i}?\n\nAssistant:", "chosen": f" the cat answer {i}",
             "rejected": " no", "margin": 0.5} for i in range(8)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "dev.jsonl").write_text("".join(
        json.dumps({"sentence1": TINY_TEXTS[i], "sentence2": TINY_TEXTS[i + 1], "score": i}) + "\n" for i in range(5)))
    (tmp_path / "r.toml").write_text('[loss]\nname = "reward-bt"\ncontrastive_weight = 0.1\n'
                                     '[train]\nbatch_size = 4\nlog_steps = 1\neval_steps = 1\n')
    code, out, _ = run(capsys, "train", str(tmp_path / "r.toml"), "--json",
                       "--set", f"model.name={json.dumps(str(tiny_model_path))}",
                       "--set", f"data.path={json.dumps(str(tmp_path / 'prefs.jsonl'))}",
                       "--set", f"eval.sts={json.dumps(str(tmp_path / 'dev.jsonl'))}",
                       "--set", f"eval.preference={json.dumps(str(tmp_path / 'prefs.jsonl'))}",
                       "--set", f"train.output_dir={json.dumps(str(tmp_path / 'run'))}",
                       "--set", "model.precision=fp32")
    summary = json.loads(out)
    assert code == 0 and summary["steps"] == 2
    assert {"sts/spearman", "preference/accuracy", "preference/mean_margin"} <= set(summary["last_eval"])
    # the run's final folder is a reward model whose head scores like the dev evaluation did
    model = load_reward_model(tmp_path / "run" / "final", precision="fp32")
    chosen = model.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = model.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert summary["last_eval"]["preference/accuracy"] == pytest.approx(100 * np.mean(chosen > rejected))


# -- bad inputs: one line naming the file and line (or the argument), exit status 2, nothing written ------------
def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedkit: error: "), err
    return lines[0]


@pytest.fixture()
def index_folder(capsys, tiny_model_path, tmp_path):
    (tmp_path / "corpus.txt").write_text("".join(text + "\n" for text in TINY_TEXTS))
    code, _, _ = run(capsys, "index", "build", "--model", str(tiny_model_path), "--corpus", str(tmp_path / "corpus.txt"),
                     "--out", str(tmp_path / "idx"), "--json")
    assert code == 0
    return tmp_path / "idx"


def test_blank_queries_are_refused(capsys, index_folder, tmp_path) -> None:
    for query in ("", "  "):
        code, out, err = run(capsys, "search", str(index_folder), query)
        assert code == 2 and out == "" and "the query text is blank" in one_line_error(err)

    queries = {"q.txt": "the cat\n\na dog\n", "q.jsonl": '{"_id": "a", "text": "the cat"}\n{"_id": "b", "text": " "}\n'}
    for name, text in queries.items():
        (tmp_path / name).write_text(text)
        code, out, err = run(capsys, "search", str(index_folder), "--queries", str(tmp_path / name),
                             "--output", str(tmp_path / "run.jsonl"))
        assert code == 2 and out == "" and f"{tmp_path / name}:2: a blank text" in one_line_error(err)
        assert not (tmp_path / "run.jsonl").exists()


def test_blank_corpus_texts_are_refused_and_nothing_written(capsys, tiny_model_path, index_folder, tmp_path) -> None:
    (tmp_path / "gap.txt").write_text("the cat sat\n\na dog runs\n")
    code, out, err = run(capsys, "index", "build", "--model", str(tiny_model_path), "--corpus",
                         str(tmp_path / "gap.txt"), "--out", str(tmp_path / "new"))
    assert code == 2 and out == "" and f"{tmp_path / 'gap.txt'}:2: a blank text" in one_line_error(err)
    assert not (tmp_path / "new").exists()
    (tmp_path / "more.jsonl").write_text('{"_id": 100, "text": "a fish swims"}\n{"_id": 101, "text": "  "}\n')
    code, out, err = run(capsys, "index", "add", str(index_folder), "--corpus", str(tmp_path / "more.jsonl"))
    assert code == 2 and out == "" and f"{tmp_path / 'more.jsonl'}:2: a blank text" in one_line_error(err)
    code, out, _ = run(capsys, "index", "info", str(index_folder), "--json")
    assert code == 0 and json.loads(out)["count"] == len(TINY_TEXTS)
    code, out, _ = run(capsys, "index", "add", str(index_folder), "--corpus", str(tmp_path / "more.jsonl"),
                       "--allow-blank", "--json")
    assert code == 0 and json.loads(out)["count"] == len(TINY_TEXTS) + 2


def test_encode_refuses_blank_texts_and_empty_files(capsys, tiny_model_path, tmp_path) -> None:
    files = {"blank.txt": ("\n  \n\n", "blank.txt: no text to embed: the file holds no rows"),
             "gap.txt": ("the cat sat\n\na dog runs\n", "gap.txt:2: no text to embed: column 'text' is missing or blank")}
    for name, (text, message) in files.items():
        (tmp_path / name).write_text(text)
        code, _, err = run(capsys, "encode", "--model", str(tiny_model_path), "--input", str(tmp_path / name),
                           "--output", str(tmp_path / "e.npy"))
        assert code == 2 and message in one_line_error(err)
        assert not (tmp_path / "e.npy").exists()


def test_a_byte_that_is_not_utf8_is_named_with_its_line(capsys, tiny_model_path, tmp_path) -> None:
    (tmp_path / "s.txt").write_bytes(b"the cat sat\na dog runs\nthe caf\xe9\n")
    code, _, err = run(capsys, "encode", "--model", str(tiny_model_path), "--input", str(tmp_path / "s.txt"),
                       "--output", str(tmp_path / "e.npy"))
    assert code == 2 and f"{tmp_path / 's.txt'}:3: not UTF-8 text: byte 8 of the line (0xe9)" in one_line_error(err)


def test_sts_gold_scores_all_equal_are_an_error(capsys, tiny_model_path, tmp_path) -> None:
    (tmp_path / "flat.jsonl").write_text("".join(
        json.dumps({"sentence1": TINY_TEXTS[i], "sentence2": TINY_TEXTS[i + 1], "score": 1}) + "\n" for i in range(4)))
    code, out, err = run(capsys, "eval", "sts", "--model", str(tiny_model_path), "--data", str(tmp_path / "flat.jsonl"))
    assert code == 2 and out == "" and "flat.jsonl: every gold score is 1" in one_line_error(err)


def test_a_closed_pipe_ends_the_output_quietly(tmp_path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `embedkit losses | head` once head has exited
    try:
        done = subprocess.run([sys.executable, "-m", "embedkit", "losses"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=300, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""


def test_a_missing_file_named_like_a_dataset_is_reported_missing_offline(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "embedkit", "encode", "--input", "org/missing", "--output",
                           str(tmp_path / "e.npy")], capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 2 and not (tmp_path / "e.npy").exists()
    assert one_line_error(done.stderr).startswith(
        "embedkit: error: org/missing: no such file (and the Hugging Face hub cannot be reached")


def test_encode_with_a_prompt(capsys, prompted_model_path, tmp_path) -> None:
    from embedkit.encoders import load_encoder

    (tmp_path / "s.txt").write_text("the cat sat\na dog runs\n")
    encoder = load_encoder(prompted_model_path, device="cpu", precision="fp32")
    for options, prompt in (((), None), (("--prompt-name", "query"), "query: "), (("--prompt", "passage: "), "passage: ")):
        code, _, _ = run(capsys, "encode", "--model", str(prompted_model_path), "--input", str(tmp_path / "s.txt"),
                         "--output", str(tmp_path / "e.npy"), "--precision", "fp32", *options)
        expected = encoder.encode(["the cat sat", "a dog runs"], prompt=prompt)
        assert code == 0
        np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)
    code, _, err = run(capsys, "encode", "--model", str(prompted_model_path), "--input", str(tmp_path / "s.txt"),
                       "--output", str(tmp_path / "e.npy"), "--prompt-name", "passage")
    assert code == 2 and "unknown prompt name 'passage'" in err


def test_quiet_hides_bars_and_verbose_adds_debug_messages(capsys, tiny_model_path, tmp_path) -> None:
    (tmp_path / "s.txt").write_text("".join(text + "\n" for text in TINY_TEXTS))
    encode = ["encode", "--model", str(tiny_model_path), "--input", str(tmp_path / "s.txt"),
              "--output", str(tmp_path / "e.npy")]
    code, out, err = run(capsys, *encode)
    assert code == 0 and "encode: 100%" in err and "debug:" not in err and out.startswith("wrote 8 x 32")
    code, out, err = run(capsys, "-q", *encode)
    assert code == 0 and err == "" and out.startswith("wrote 8 x 32")  # results still print
    code, _, err = run(capsys, "--verbose", *encode)
    assert code == 0 and f"embedkit: debug: loading model {str(tiny_model_path)!r}" in err
    with pytest.raises(SystemExit):
        main(["-q", "-v", "losses"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_index_info_loads_no_model_library(capsys, tiny_model_path, tmp_path) -> None:
    (tmp_path / "corpus.txt").write_text("".join(text + "\n" for text in TINY_TEXTS))
    code, _, _ = run(capsys, "index", "build", "--model", str(tiny_model_path), "--spec", "faiss:Flat",
                     "--corpus", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "idx"), "--json")
    assert code == 0
    script = ("import json, sys\nfrom embedkit.cli import main\nmain(['index', 'info', sys.argv[1], '--json'])\n"
              "print(json.dumps([m for m in ('sentence_transformers', 'transformers', 'scipy', 'torch') "
              "if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "idx")], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []  # a faiss index needs faiss alone
