"""Progress bars: one switch, labels that say what is counted, and no bars of other libraries that say nothing
(transformers' "Loading weights" and "Writing model shards", sentence-transformers' "Batches")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TEXTS, sentence_examples

import embedkit
from embedkit import progress
from embedkit.encoders import load_encoder
from embedkit.eval import STSEvaluator
from embedkit.losses import build_loss
from embedkit.training.fit import FitSettings, fit

LIBRARY_BARS = ("Loading weights", "Writing model shards", "Batches")


@pytest.fixture
def bars_off():
    previous = progress.set_progress(False)
    yield
    progress.set_progress(previous)


def test_shows_decides_by_size_unless_told(bars_off) -> None:
    progress.set_progress(True)
    assert not progress.shows(progress.SHOW_FROM - 1) and progress.shows(progress.SHOW_FROM)
    assert progress.shows(1, show=True) and not progress.shows(10**6, show=False)
    progress.set_progress(False)
    assert not progress.shows(10**6) and not progress.shows(1, show=True)


def test_stages_nest_into_the_label() -> None:
    assert progress.label("encode") == "encode"
    with progress.stage("dev"):
        with progress.stage("sts"):
            assert progress.label("encode") == "dev sts: encode"
        assert progress.label("encode") == "dev: encode"
    assert progress.label("encode") == "encode"


def test_library_bars_come_back_as_they_were(capfd) -> None:
    from transformers.utils import logging as transformers_logging

    def own_hook(factory, args, kwargs):
        return factory(*args, **kwargs)

    before = transformers_logging.set_tqdm_hook(own_hook)
    try:
        with progress.quiet_library_bars():
            for _ in transformers_logging.tqdm(range(3), desc="Loading weights"):
                pass
        assert "Loading weights" not in capfd.readouterr().err
        # blocks of two threads that close in the order they opened (not nested) share one hook
        first, second = progress.quiet_library_bars(), progress.quiet_library_bars()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        for _ in transformers_logging.tqdm(range(3), desc="Loading weights"):
            pass
        second.__exit__(None, None, None)
        assert "Loading weights" not in capfd.readouterr().err
    finally:
        assert transformers_logging.set_tqdm_hook(before) is own_hook  # the user's hook was put back


def test_model_loads_and_saves_draw_no_library_bars(tiny_model_path, tmp_path, capfd) -> None:
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(str(tiny_model_path), device="cpu").save(str(tmp_path / "plain"))
    shown = capfd.readouterr().err
    assert "Loading weights" in shown and "Writing model shards" in shown  # what embedkit hides

    encoder = load_encoder(tiny_model_path, device="cpu")
    encoder.save(tmp_path / "saved")
    load_encoder(tmp_path / "saved", device="cpu")
    assert capfd.readouterr().err == ""


def test_encode_draws_its_own_labelled_bar(tiny_model_path, capfd, bars_off) -> None:
    encoder = load_encoder(tiny_model_path, device="cpu", precision="fp32")
    texts = TINY_TEXTS * 3
    encoder.encode(texts, batch_size=8, show_progress=True)
    assert capfd.readouterr().err == ""  # bars off: nothing at all

    progress.set_progress(True)
    vectors = encoder.encode(texts, batch_size=8, show_progress=True)
    shown = capfd.readouterr().err
    assert "encode: 100%" in shown and "24/24" in shown
    assert not any(bar in shown for bar in LIBRARY_BARS)
    # batched by length in several calls, the same vectors as sentence-transformers' one call
    expected = encoder.model.encode(texts, batch_size=8, convert_to_numpy=True, show_progress_bar=False)
    assert vectors.shape == (24, 32)
    assert abs(vectors - expected).max() < 1e-5


def test_a_dev_evaluation_inside_training_is_labelled_and_logged(tiny_model_path, tmp_path, capfd, caplog,
                                                                monkeypatch) -> None:
    monkeypatch.setattr(progress, "SHOW_FROM", 1)  # the dev set is tiny: show its bars anyway
    (tmp_path / "dev.jsonl").write_text("".join(
        json.dumps({"sentence1": TINY_TEXTS[i], "sentence2": TINY_TEXTS[i + 1], "score": i}) + "\n" for i in range(5)))
    encoder = load_encoder(tiny_model_path, device="cpu", precision="fp32")
    capfd.readouterr()
    settings = FitSettings(output_dir=tmp_path / "run", batch_size=4, max_steps=1, show_progress=False)
    with caplog.at_level("INFO", logger="embedkit"):
        fit(encoder, sentence_examples(), build_loss("simcse-unsup"), settings,
            evaluator=STSEvaluator(tmp_path / "dev.jsonl"))
    shown = capfd.readouterr().err
    assert "dev sts: encode: 100%" in shown
    assert not any(bar in shown for bar in LIBRARY_BARS)
    messages = [record.getMessage() for record in caplog.records if record.name == "embedkit.training.fit"]
    assert [message.split(" spearman")[0] for message in messages] == ["step 0: dev", "step 1: dev"]


def test_a_library_user_sees_no_messages_unless_logging_is_configured() -> None:
    script = "import logging, embedkit\nlogging.getLogger('embedkit.training.fit').warning('a message')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          check=False, cwd=Path(embedkit.__file__).parents[1])
    assert done.returncode == 0 and done.stderr == ""
