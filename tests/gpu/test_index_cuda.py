"""GPU index paths: exact torch search on CUDA, and faiss on the GPU when faiss-gpu sees one."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from embedkit.index import exact_search
from embedkit.index.exact import TorchBackend
from embedkit.index.faiss_backend import GPU_MAX_K, FaissBackend
from embedkit.index.spec import IndexSpec

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((5000, 32)).astype(np.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_exact_search_on_cuda_matches_the_cpu(data) -> None:
    queries, corpus = data
    cpu_scores, cpu_ids = exact_search(queries, corpus, 20, chunk_size=1000)
    cuda_scores, cuda_ids = exact_search(queries, torch.from_numpy(corpus).cuda(), 20, chunk_size=1000)
    np.testing.assert_allclose(cuda_scores, cpu_scores, rtol=1e-3, atol=1e-3)
    assert (cuda_ids == cpu_ids).mean() > 0.99  # near-ties may swap under another summation order
    backend = TorchBackend.create(IndexSpec("torch", "cuda"), 32, "ip", "auto")
    backend.add(corpus, np.arange(len(corpus)))
    assert (backend.search(queries, 20)[1] == cpu_ids).mean() > 0.99


@pytest.mark.skipif(faiss.get_num_gpus() == 0 if hasattr(faiss, "get_num_gpus") else True, reason="needs faiss-gpu")
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_faiss_gpu_search_matches_the_cpu_also_beyond_2048_results(data, factory) -> None:
    queries, corpus = data
    gpu = FaissBackend.create(IndexSpec("faiss", factory), 32, "ip", "gpu")
    cpu = FaissBackend.create(IndexSpec("faiss", factory), 32, "ip", "cpu")
    for backend in (gpu, cpu):
        if backend.needs_training:
            backend.train(corpus)
        backend.add(corpus, np.arange(len(corpus)))
        if "IVF" in factory:
            backend.set_search_params({"nprobe": 16})
    for k in (10, GPU_MAX_K + 100):
        assert (gpu.search(queries, k)[1] == cpu.search(queries, k)[1]).mean() > 0.99
