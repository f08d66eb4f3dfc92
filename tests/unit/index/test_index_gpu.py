"""GPU selection for faiss indexes, exercised on the CPU with a fake faiss module that reports GPUs."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pytest

from embedkit.index import IndexWarning
from embedkit.index.faiss_backend import GPU_MAX_K, FaissBackend, clone_to_gpus, gpu_count, search_device
from embedkit.index.spec import IndexSpec


class FakeGpuFaiss:
    """The real faiss, but it reports ``gpus`` GPUs, and its "GPU copy" is an emptied CPU clone: a search that
    went to the GPU copy finds nothing, one that went to the CPU index finds the vectors."""

    GpuParameterSpace = faiss.ParameterSpace

    class GpuMultipleClonerOptions:
        shard = False

    def __init__(self, gpus: int, fail: bool = False) -> None:
        self.gpus = gpus
        self.fail = fail
        self.clones: list[tuple[bool, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(faiss, name)

    def get_num_gpus(self) -> int:
        return self.gpus

    def index_cpu_to_all_gpus(self, index: Any, co: Any = None, ngpu: int = -1) -> Any:
        if self.fail:
            raise RuntimeError("Error in ToGpuCloner: this index type has no GPU version")
        self.clones.append((co.shard, ngpu))
        copy = faiss.clone_index(index)
        copy.reset()
        return copy


@pytest.mark.parametrize(
    ("gpus", "device", "k", "nprobe", "where"),
    [
        (0, "auto", 10, None, "cpu"),
        (1, "auto", 10, None, "gpu"),
        (4, "auto", GPU_MAX_K, None, "gpu"),
        (4, "auto", GPU_MAX_K + 1, None, "cpu"),  # faiss GPU indexes return at most 2048 results
        (2, "gpu", 10, GPU_MAX_K + 1, "cpu"),  # and probe at most 2048 lists
        (2, "cpu", 10, None, "cpu"),
    ],
)
def test_search_device(gpus, device, k, nprobe, where) -> None:
    assert search_device(gpus, device, k, nprobe) == where


def test_gpu_count_reads_get_num_gpus(monkeypatch) -> None:
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 3)
    assert gpu_count(faiss) == 3
    assert gpu_count(object()) == 0  # a faiss build without GPU support


@pytest.mark.parametrize(("gpus", "shard"), [(1, False), (2, True), (8, True)])
def test_several_gpus_shard_the_index(gpus, shard) -> None:
    fake = FakeGpuFaiss(gpus)
    clone_to_gpus(fake, faiss.IndexFlatIP(4), gpus)
    assert fake.clones == [(shard, gpus)]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)


def test_searches_go_to_the_gpu_copy_unless_k_is_beyond_its_limit(vectors) -> None:
    fake = FakeGpuFaiss(2)
    backend = FaissBackend.create(IndexSpec("faiss", "Flat"), 8, "ip", "auto", faiss_module=fake)
    backend.add(vectors, np.arange(300))
    assert (backend.search(vectors[:3], 10)[1] == -1).all()  # the (empty) GPU copy answered
    assert fake.clones == [(True, 2)]
    _, found = backend.search(vectors[:3], GPU_MAX_K + 1)  # the CPU index answered, with every vector
    assert (found[:, :300] >= 0).all() and (found[:, 300:] == -1).all()
    backend.search(vectors[:3], 10)
    assert len(fake.clones) == 1  # the GPU copy is kept between searches...
    backend.add(vectors[:1], np.array([1000]))
    backend.search(vectors[:3], 10)
    assert len(fake.clones) == 2  # ...and made again after a change


def test_device_cpu_never_uses_the_gpus(vectors) -> None:
    fake = FakeGpuFaiss(2)
    backend = FaissBackend.create(IndexSpec("faiss", "Flat"), 8, "ip", "cpu", faiss_module=fake)
    backend.add(vectors, np.arange(300))
    assert (backend.search(vectors[:3], 10)[1] >= 0).all() and fake.clones == []


def test_ivf_training_clusters_on_the_gpus(vectors) -> None:
    fake = FakeGpuFaiss(1)
    backend = FaissBackend.create(IndexSpec("faiss", "IVF2,Flat"), 8, "ip", "auto", faiss_module=fake)
    backend.train(vectors)
    assert fake.clones == [(False, 1)] and backend.index.is_trained


def test_an_index_without_a_gpu_version_searches_on_the_cpu(vectors) -> None:
    backend = FaissBackend.create(IndexSpec("faiss", "HNSW8"), 8, "ip", "auto", faiss_module=FakeGpuFaiss(1, fail=True))
    backend.add(vectors, np.arange(300))
    with pytest.warns(IndexWarning, match="cannot put 'HNSW8' on the GPU"):
        assert (backend.search(vectors[:3], 5)[1] >= 0).all()
