"""Distributed encode and sharded index builds under 2 and 3 gloo processes equal one process."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.index import Index, build_index
from embedkit.index.sharded import build_index_sharded, encode_sharded, shard_bounds

WORDS = ["cat", "dog", "sun", "rain", "train", "ship", "piano", "castle", "river", "hill", "book", "mat"]
# 301 documents: not a multiple of 2 or 3, so the shards differ in size
CORPUS = [(f"doc-{i}", f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]} number {i} by the {WORDS[(i * 7) % 11]}",
           {"position": i}) for i in range(301)]
QUERIES = ["the cat by the river", "a train and a ship", "rain on the hill", "number 17"]
SPECS = {"torch": "torch", "flat": "faiss:Flat", "ivf": "faiss:IVF4,Flat", "ivfpq": "faiss:IVF4,PQ4x2",
         "bivf": "faiss:BIVF4,rescore=4"}


def worker(rank: int, world: int, model: str, folder: str, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        encoder = load_encoder(model, precision="fp32")
        embeddings = encode_sharded(encoder, [text for _, text, _ in CORPUS], batch_size=16)
        assert (embeddings is None) == (rank != 0)
        if rank == 0:
            np.save(f"{folder}/embeddings.npy", embeddings)
        for name, spec in SPECS.items():
            index = build_index_sharded(encoder, CORPUS, spec, batch_size=16, chunk_size=50, show_progress=False)
            assert (index is None) == (rank != 0)
            if rank == 0:
                index.save(f"{folder}/{name}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", [t for _, t, _ in CORPUS], seed=1))


def test_shards_cover_the_corpus_in_order() -> None:
    for n in (0, 1, 7, 301):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, rank, world) for rank in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_encode_and_sharded_builds_equal_one_process(tmp_path, model: str, world: int) -> None:
    mp.start_processes(worker, args=(world, model, str(tmp_path), str(tmp_path / "init")), nprocs=world,
                       start_method="spawn")
    encoder = load_encoder(model, precision="fp32")
    single_embeddings = encoder.encode([text for _, text, _ in CORPUS], batch_size=16)
    np.testing.assert_allclose(np.load(tmp_path / "embeddings.npy"), single_embeddings, rtol=1e-5, atol=1e-6)

    for name, spec in SPECS.items():
        # saved and loaded like the sharded one: faiss reads a flat inner-product index back as IndexFlatIP
        build_index(encoder, CORPUS, spec, batch_size=16, chunk_size=50, show_progress=False).save(tmp_path / "one")
        single = Index.load(tmp_path / "one", encoder=encoder)
        sharded = Index.load(tmp_path / name, encoder=encoder)
        assert len(sharded) == len(single) == len(CORPUS), name
        # the same held-out queries, ground truth and choice (float IVF indexes tune nprobe; torch, Flat and binary
        # indexes nothing)
        assert sharded.manifest.search_tuning == single.manifest.search_tuning, name
        assert (single.manifest.search_tuning is None) == (name in ("torch", "flat", "bivf")), name
        if name.startswith("ivf"):
            single.set_search_params(nprobe=2)  # probe part of the lists: the lists themselves must agree
            sharded.set_search_params(nprobe=2)
        expected = single.search(QUERIES, k=20, return_payloads=True)
        found = sharded.search(QUERIES, k=20, return_payloads=True)
        np.testing.assert_array_equal(found.ids, expected.ids, err_msg=name)
        np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(found.texts, expected.texts, err_msg=name)
        np.testing.assert_array_equal(found.metadata, expected.metadata, err_msg=name)
        assert sharded.info()["backend"] == single.info()["backend"], name


@pytest.mark.slow
def test_index_build_command_under_torchrun_equals_one_process(tmp_path, model: str) -> None:
    import json
    import subprocess
    import sys

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t, _ in CORPUS))
    build = ["-m", "embedkit", "index", "build", "--model", model, "--corpus", str(corpus), "--spec",
             "faiss:IVF4,Flat", "--precision", "fp32", "--json"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*torchrun, *build, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == len(CORPUS)  # rank 0 alone prints
    done = subprocess.run([sys.executable, *build, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr

    encoder = load_encoder(model, precision="fp32")
    two, one = (Index.load(tmp_path / name, encoder=encoder) for name in ("two", "one"))
    for index in (two, one):
        index.set_search_params(nprobe=2)
    np.testing.assert_array_equal(two.search(QUERIES, k=20).ids, one.search(QUERIES, k=20).ids)
