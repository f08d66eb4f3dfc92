"""The index folder's layout in one process: versions and the pointer, conflicts and the writers' lock, readers
holding a version, the old layout, manifest integrity, folder modes and progress."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tqdm.auto
from conftest import held_elsewhere

from embedkit.encoders import load_encoder
from embedkit.fsutil import LockTimeoutError
from embedkit.index import Index, IndexConflictError, IndexFileError, build_index
from embedkit.index.folder import POINTER_FILE, current_folder, reading, writer_lock
from embedkit.index.store import MANIFEST_FILE, content_checksum

DIM = 32
DOCS = [(f"d{i}", f"document {i}") for i in range(6)]


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    return load_encoder(tiny_model_path, device="cpu", precision="fp32")


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def saved(encoder, root, spec: str = "faiss:Flat"):
    return build_index(encoder, DOCS, spec=spec, embeddings=vectors(len(DOCS))).save(root)


def edit_manifest(root, change, checksum: bool = False) -> None:
    """Rewrite the current manifest with ``change(body)``; ``checksum``: recompute its checksum to match."""
    path = current_folder(root) / MANIFEST_FILE
    body = json.loads(path.read_text())
    change(body)
    if checksum:
        body.pop("checksum", None)
        body["checksum"] = content_checksum(body)
    path.write_text(json.dumps(body))


# -- versions, conflicts and the lock ------------------------------------------------------------------------
def test_a_save_is_a_new_version_behind_the_pointer(encoder, tmp_path) -> None:
    root = saved(encoder, tmp_path / "idx")
    assert sorted(os.listdir(root)) == [POINTER_FILE, "v-000001"]
    with Index.update(root) as index:
        index.add([("x", "new")], embeddings=vectors(1, 1))
    assert sorted(os.listdir(root)) == [POINTER_FILE, "v-000002"] and index.version == "v-000002"
    assert Index.load(root).info()["version"] == "v-000002" and len(Index.load(root)) == 7


def test_nothing_is_saved_when_the_update_fails(encoder, tmp_path) -> None:
    root = saved(encoder, tmp_path / "idx")
    with pytest.raises(RuntimeError, match="changed my mind"), Index.update(root) as index:
        index.add([("x", "new")], embeddings=vectors(1, 1))
        raise RuntimeError("changed my mind")
    assert len(Index.load(root)) == 6 and sorted(os.listdir(root)) == [POINTER_FILE, "v-000001"]


def test_saving_over_another_writers_change_is_refused(encoder, tmp_path) -> None:
    root = saved(encoder, tmp_path / "idx")
    first, second = Index.load(root), Index.load(root)
    first.add([("a", "from the first")], embeddings=vectors(1, 1))
    second.add([("b", "from the second")], embeddings=vectors(1, 2))
    first.save(root)
    with pytest.raises(IndexConflictError, match="another writer saved this index after it was loaded"):
        second.save(root)
    assert set(Index.load(root).store.present(["a", "b"])) == {"a"}
    second.save(tmp_path / "elsewhere")  # a copy elsewhere is no conflict
    build_index(encoder, DOCS[:2], embeddings=vectors(2)).save(root)  # nor is a build that replaces the folder
    assert len(Index.load(root)) == 2


def test_a_second_writer_waits_for_the_lock_then_gives_up(encoder, tmp_path) -> None:
    root = saved(encoder, tmp_path / "idx")
    with held_elsewhere(writer_lock(root)):
        locked = pytest.raises(LockTimeoutError, match=f"index {root} is locked by another writer")
        with locked, Index.update(root, lock_timeout=0.2) as index:
            index.remove(["d1"])
        assert len(Index.load(root)) == 6  # readers need no lock
    with Index.update(root, lock_timeout=0) as index:
        index.remove(["d1"])
    assert len(Index.load(root)) == 5


# -- readers -------------------------------------------------------------------------------------------------
def test_a_version_being_read_outlives_its_replacement(encoder, tmp_path) -> None:
    root = saved(encoder, tmp_path / "idx")
    with reading(root) as (folder, version):
        with Index.update(root) as index:
            index.remove(["d1"])
        assert version == "v-000001" and folder.is_dir()  # held: not removed under the reader
    with Index.update(root) as index:
        index.remove(["d2"])
    assert sorted(os.listdir(root)) == [POINTER_FILE, "v-000003"]  # released: removed by the next writer


def test_a_loaded_index_keeps_reading_its_version_after_it_was_removed(encoder, tmp_path) -> None:
    root = saved(encoder, tmp_path / "idx")
    old = Index.load(root)
    for doc_id in ("d1", "d2"):
        with Index.update(root) as index:
            index.remove([doc_id])
    assert not (root / "v-000001").exists()
    result = old.search(vectors(1, 0)[:1], k=6, return_payloads=True)  # payloads come from the removed file
    assert set(result.ids[0]) == {d for d, _ in DOCS} and set(result.texts[0]) == {t for _, t in DOCS}


def test_old_layout_folders_are_read_and_converted_on_the_first_save(encoder, tmp_path) -> None:
    source = saved(encoder, tmp_path / "new")
    root = tmp_path / "idx"
    root.mkdir()
    for path in current_folder(source).iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    assert Index.load(root).version == "." and len(Index.load(root)) == 6
    with Index.update(root) as index:
        index.remove(["d1"])
    assert sorted(os.listdir(root)) == [POINTER_FILE, "v-000001"] and len(Index.load(root)) == 5


def test_an_index_that_a_crashed_old_save_stepped_aside_comes_back(encoder, tmp_path) -> None:
    """embedkit 0.1 renamed idx to .idx.old-PID before renaming the new folder in; a kill between the two left
    no idx at all."""
    source = saved(encoder, tmp_path / "new")
    aside = tmp_path / ".idx.old-4242"
    aside.mkdir()
    for path in current_folder(source).iterdir():
        (aside / path.name).write_bytes(path.read_bytes())
    (tmp_path / ".idx.tmp-k3j2h1").mkdir()  # the new folder, half written
    assert len(Index.load(tmp_path / "idx")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", ".new.lock", "idx", "new"]


# -- manifest integrity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("checksum", [False, True], ids=["as-edited", "checksum-recomputed"])
def test_a_manifest_that_lists_no_files_is_refused(encoder, tmp_path, checksum) -> None:
    root = saved(encoder, tmp_path / "idx")
    edit_manifest(root, lambda body: body.update(files={}), checksum)
    match = "gives no size and sha256 for payloads.sqlite" if checksum else "does not match its checksum"
    with pytest.raises(IndexFileError, match=match) as error:
        Index.load(root)
    assert str(current_folder(root) / MANIFEST_FILE) in str(error.value) and "\n" not in str(error.value)


def test_a_manifest_without_the_vectors_checksum_is_refused(encoder, tmp_path) -> None:
    root = saved(encoder, tmp_path / "idx")
    edit_manifest(root, lambda body: body["files"].pop("index.faiss"), checksum=True)
    with pytest.raises(IndexFileError, match="gives no size and sha256 for index.faiss"):
        Index.load(root)
    edit_manifest(root, lambda body: body["files"]["payloads.sqlite"].pop("sha256"), checksum=True)
    with pytest.raises(IndexFileError, match="no size and sha256 for"):
        Index.load(root)


def test_an_edited_spec_is_refused(encoder, tmp_path) -> None:
    root = saved(encoder, tmp_path / "idx")
    edit_manifest(root, lambda body: body.update(spec="faiss:HNSW32"))
    with pytest.raises(IndexFileError, match="does not match its checksum"):
        Index.load(root)
    # a version 1 manifest has no checksum: the faiss file's own structure gives the edit away
    edit_manifest(root, lambda body: body.update(format_version=1) or body.pop("checksum"))
    with pytest.raises(IndexFileError, match=r"holds IndexIDMap2\(IndexFlatIP\), but the manifest's spec"):
        Index.load(root)
    edit_manifest(root, lambda body: body.update(spec="faiss:Flat"))
    assert len(Index.load(root)) == 6  # the version 1 manifest as it was written


# -- modes and progress --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "mask", "folders", "files"),
    [("faiss:Flat", 0o022, 0o755, 0o644), ("faiss:Flat", 0o007, 0o770, 0o660), ("torch", 0o002, 0o775, 0o664)],
)
def test_folders_and_files_follow_the_umask(encoder, tmp_path, spec, mask, folders, files) -> None:
    previous = os.umask(mask)
    try:
        root = saved(encoder, tmp_path / "idx", spec)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(root.stat().st_mode) == folders and stat.S_IMODE(current_folder(root).stat().st_mode) == folders
    for path in [root / POINTER_FILE, *current_folder(root).iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == files, path.name


def test_working_copies_stay_private(encoder) -> None:
    index = build_index(encoder, DOCS, embeddings=vectors(len(DOCS)))
    assert stat.S_IMODE(Path(index.store.path).parent.stat().st_mode) == 0o700  # they hold the corpus's texts


def test_progress_moves_per_encode_call_of_several_batches(encoder, monkeypatch) -> None:
    updates: list[int] = []
    calls: list[tuple[int, int]] = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            if getattr(self, "desc", None) == "embedding and indexing":  # the index's bar, not the encoder's own
                updates.append(int(n or 0))
            return super().update(n)

    encode = encoder.encode

    def recording_encode(texts, batch_size=32, **options):
        calls.append((len(texts), batch_size))
        return encode(texts, batch_size=batch_size, **options)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)  # embedkit.progress draws every bar from it
    monkeypatch.setattr(encoder, "encode", recording_encode)
    texts = [f"the cat sat on the mat {'again ' * (i % 5)}" for i in range(100)]
    index = build_index(encoder, texts, batch_size=2, show_progress=True)
    # BATCHES_PER_CALL (16) batches of 2 per call, so that a backend with several streams keeps them all busy
    assert calls == [(32, 2)] * 3 + [(4, 2)]
    assert updates == [32] * 3 + [4]
    # batched by length, as one encode call batches: the same vectors as embedding all at once
    expected = encode(texts, batch_size=2, normalize=True)
    np.testing.assert_allclose(index.search(expected[:3], k=1).scores[:, 0], 1.0, atol=1e-5)
    assert index.search(expected[:3], k=1).ids[:, 0].tolist() == [0, 1, 2]
