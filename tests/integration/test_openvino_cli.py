"""``--backend`` on the commands that encode, and ``embedkit quantize``, on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_TEXTS

from embedkit.cli import main

pytest.importorskip("openvino")


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path_factory.getbasetemp() / "embedkit-cache"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedkit: error: "), err
    return lines[0]


def encode(capsys, model, texts_file, output, *options: str) -> np.ndarray:
    code, _, err = run(capsys, "encode", "--model", str(model), "--input", str(texts_file), "--output", str(output),
                       "--precision", "fp32", *options)
    assert code == 0, err
    return np.load(output)


def test_encode_with_openvino_gives_the_torch_embeddings(capsys, tiny_model_path, tmp_path) -> None:
    (tmp_path / "s.txt").write_text("\n".join(TINY_TEXTS) + "\n")
    torch_embeddings = encode(capsys, tiny_model_path, tmp_path / "s.txt", tmp_path / "t.npy")
    openvino_embeddings = encode(capsys, tiny_model_path, tmp_path / "s.txt", tmp_path / "o.npy", "--backend", "openvino")
    np.testing.assert_allclose(openvino_embeddings, torch_embeddings, atol=1e-5)


def test_encode_runs_auto_unless_embedkit_backend_names_one(capsys, tiny_model_path, tmp_path, monkeypatch) -> None:
    (tmp_path / "s.txt").write_text("\n".join(TINY_TEXTS) + "\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBEDKIT_CACHE", str(cache))
    monkeypatch.setenv("EMBEDKIT_BACKEND", "torch")
    torch_embeddings = encode(capsys, tiny_model_path, tmp_path / "s.txt", tmp_path / "t.npy")
    assert not (cache / "openvino").exists()
    monkeypatch.delenv("EMBEDKIT_BACKEND")
    auto_embeddings = encode(capsys, tiny_model_path, tmp_path / "s.txt", tmp_path / "a.npy")
    assert len(list((cache / "openvino").glob("*/model.xml"))) == 1  # auto converted the model: OpenVINO ran it
    np.testing.assert_allclose(auto_embeddings, torch_embeddings, atol=1e-5)
    monkeypatch.setenv("EMBEDKIT_BACKEND", "onnx")
    code, _, err = run(capsys, "encode", "--model", str(tiny_model_path), "--input", str(tmp_path / "s.txt"),
                       "--output", str(tmp_path / "e.npy"))
    assert code == 2
    expected = "unknown backend 'onnx' in $EMBEDKIT_BACKEND; valid: auto, torch, openvino, openvino-int8"
    assert expected in one_line_error(err)


def test_quantize_writes_a_model_for_the_int8_backend_and_reports_the_sts_drop(capsys, tiny_model_path, tmp_path):
    pytest.importorskip("nncf")
    (tmp_path / "s.txt").write_text("\n".join(TINY_TEXTS) + "\n")
    rows = [("the cat sat", "the cat sat on the mat", 4.5), ("a dog runs", "the train leaves", 0.5),
            ("the sun", "the sun rises", 4.0), ("rain falls", "she plays the piano", 1.0)]
    (tmp_path / "sts.jsonl").write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n"
                                                for a, b, s in rows))
    code, out, err = run(capsys, "quantize", "--model", str(tiny_model_path), "--calibration", str(tmp_path / "s.txt"),
                         "--out", str(tmp_path / "int8"), "--sts", str(tmp_path / "sts.jsonl"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["calibration_texts"] == len(TINY_TEXTS)
    scores = result["sts_spearman"]
    assert result["sts_drop"] == pytest.approx(scores["openvino"] - scores["openvino-int8"])
    int8 = encode(capsys, tmp_path / "int8", tmp_path / "s.txt", tmp_path / "q.npy", "--backend", "openvino-int8")
    assert int8.shape == (len(TINY_TEXTS), 32) and np.isfinite(int8).all()


def test_bad_backend_use_is_one_line(capsys, tiny_model_path, tmp_path) -> None:
    (tmp_path / "s.txt").write_text("the cat sat\n")
    code, _, err = run(capsys, "encode", "--model", str(tiny_model_path), "--input", str(tmp_path / "s.txt"),
                       "--output", str(tmp_path / "e.npy"), "--backend", "openvino-int8")
    assert code == 2 and "holds no int8 model; write one with: embedkit quantize" in one_line_error(err)
    code, _, err = run(capsys, "quantize", "--model", str(tiny_model_path), "--calibration", str(tmp_path / "s.txt"),
                       "--out", str(tmp_path / "q"), "--samples", "0")
    assert code == 2 and "--samples must be at least 1, got 0" in one_line_error(err)
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    code, _, err = run(capsys, "quantize", "--model", str(tiny_model_path), "--calibration",
                       str(tmp_path / "blank.jsonl"), "--out", str(tmp_path / "q"))
    assert code == 2 and "no calibration text" in one_line_error(err)
