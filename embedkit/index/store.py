"""What a version of an index folder holds besides the vectors: payloads in SQLite, and ``manifest.json``.

A version folder (:mod:`embedkit.index.folder` keeps versions behind a pointer)::

    manifest.json         embedkit version, model name and weight fingerprint, dimension (and the
                          ``truncate_dim`` the model's embeddings were cut to, when they were), metric,
                          normalisation, spec, the prompt put before each document, count, id type,
                          creation time, search parameters and how they were tuned
                          (:mod:`embedkit.index.tuning`), the size and sha256 of every other file
                          (checked before any of them is parsed), the quantization of the codes and its
                          calibration (see embedkit.index.quantized), and the sha256 of the manifest's
                          own content (so that an edited spec is refused)
    payloads.sqlite       one row per vector: internal id, external id, text, text id, metadata (JSON)
    index.faiss           (faiss backends) written by faiss.write_index (binary indexes: write_index_binary)
    rescore.safetensors   (faiss specs with rescore=<r>) the vectors that rescore candidates, and their ids
    vectors.safetensors   (torch backend) vectors and internal ids

External ids are the corpus's own, ``int`` or ``str`` (one type per index), kept with their type: the
``external`` column has no declared type, so SQLite stores ``1`` and ``"1"`` as different values. Internal ids
are int64 numbers that the backend stores; they count up and are never reused.

A saved version is never changed in place: an index loaded from it reads its SQLite file read-only, copies it
to a private working file on the first change, and a save writes a whole new version. Working files live in
``embedkit-index-*`` folders of the temporary folder, locked by their process while it lives, so that the next
store created removes those of processes that were killed (:func:`embedkit.fsutil.remove_if_abandoned`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from embedkit.errors import DataError
from embedkit.fsutil import owned_directory, remove_if_abandoned
from embedkit.index.spec import IndexFileError
from embedkit.types import JsonValue

if TYPE_CHECKING:
    from embedkit.index.tuning import SearchTuning

MANIFEST_FILE = "manifest.json"
PAYLOADS_FILE = "payloads.sqlite"
FORMAT = "embedkit-index"
FORMAT_VERSION = 3
"""Version 2 added the manifest's ``checksum``, version 3 its ``search_tuning``; older manifests are still read."""
READABLE_VERSIONS = (1, 2, 3)
WORKDIR_PREFIX = "embedkit-index-"
_Value = TypeVar("_Value")
_SQL_VARIABLES = 900  # ids per "IN (...)" query, under SQLite's historical limit of 999 parameters
_INT64_MAX = 2**63 - 1

_SCHEMA = """
CREATE TABLE items (
    internal INTEGER PRIMARY KEY,
    external NOT NULL UNIQUE,
    text TEXT NOT NULL,
    text_id INTEGER NOT NULL,
    metadata TEXT
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
"""


ExternalId = int | str
"""A document id as the corpus gives it; one index holds ids of one type."""
Metadata = Mapping[str, JsonValue]
"""What a document carries besides its text; stored as JSON."""

FileDigest = dict[str, int | str]
"""``{"bytes": size, "sha256": hex}`` of one file of an index folder, as the manifest records it."""


# -- manifest ------------------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """The contents of ``manifest.json``; see the module docs."""

    spec: str
    metric: str
    normalize: bool
    dimension: int
    model_name: str
    model_fingerprint: str
    document_prompt: str = ""  # manifests written before prompts were recorded had none
    count: int = 0
    id_type: str | None = None
    embedkit_version: str = ""
    created: str = ""
    search_params: dict[str, float] = field(default_factory=dict)
    quantization: dict[str, JsonValue] = field(default_factory=dict)
    search_tuning: SearchTuning | None = None
    files: dict[str, FileDigest] = field(default_factory=dict)
    truncate_dim: int | None = None
    """The leading dimensions of the model's embeddings kept (Matryoshka); ``None``: all of them."""

    def to_json(self) -> str:
        body = asdict(self)
        if body["truncate_dim"] is None:
            del body["truncate_dim"]  # so that embedkit versions without truncation read untruncated indexes
        model = {"name": body.pop("model_name"), "fingerprint": body.pop("model_fingerprint")}
        document = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, **body}
        return json.dumps({**document, "checksum": content_checksum(document)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Parse a manifest, checking its format and (version 2) its checksum.

        Raises:
            IndexFileError: invalid JSON or fields, an unknown format version, or content that does not match
                its checksum; names the file.
        """
        try:
            body = json.loads(text)
            if body.get("format") != FORMAT:
                raise ValueError("not an embedkit index manifest")
            version = body.get("format_version")
            if version not in READABLE_VERSIONS:
                readable = ", ".join(map(str, READABLE_VERSIONS))
                raise ValueError(f"format version {version}; this embedkit reads versions {readable}")
            checksum = body.pop("checksum", None)
            if version > 1 and checksum != content_checksum(body):
                raise IndexFileError(
                    f"{where}: the manifest's content does not match its checksum (was it edited?); restore it, or "
                    "build the index again"
                )
            del body["format"], body["format_version"]
            model = body.pop("model")
            manifest = cls(model_name=model["name"], model_fingerprint=model["fingerprint"], **body)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise IndexFileError(f"{where}: not a valid index manifest ({error})") from None
        return manifest


def content_checksum(document: Mapping[str, object]) -> str:
    """``"sha256:<hex>"`` of a JSON document written canonically (sorted keys, no spaces)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"sha256:{hashlib.sha256(canonical.encode()).hexdigest()}"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def file_digest(path: Path) -> FileDigest:
    """``{"bytes": size, "sha256": hex}`` of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for piece in iter(lambda: file.read(1 << 20), b""):
            digest.update(piece)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """The manifest of an index folder, after checking that every file it lists is intact.

    Raises:
        IndexFileError: no such folder, no manifest, an invalid manifest, or a missing, truncated or altered file.
    """
    root = Path(folder)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise IndexFileError(f"{root}: no such index folder")
    if not path.is_file():
        raise IndexFileError(f"{root}: not an index folder (no {MANIFEST_FILE})")
    try:
        manifest = Manifest.from_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as error:
        raise IndexFileError(f"{path}: cannot read the manifest ({error})") from None
    check_listed(manifest, path, [PAYLOADS_FILE])
    for name, expected in manifest.files.items():
        file = root / name
        if not file.is_file():
            raise IndexFileError(f"{file}: missing; the index folder is incomplete")
        if file.stat().st_size != expected.get("bytes") or file_digest(file)["sha256"] != expected.get("sha256"):
            raise IndexFileError(f"{file}: corrupt or truncated (its size or checksum differs from the manifest)")
    return manifest


def check_listed(manifest: Manifest, path: Path, required: Sequence[str]) -> None:
    """Refuse a manifest that does not vouch for ``required`` files with a size and a sha256 each: a file it does
    not list would be read unchecked.

    Raises:
        IndexFileError: names the manifest and the files.
    """
    unchecked = [name for name in required if not _is_digest(manifest.files.get(name))]
    unchecked += [name for name, digest in manifest.files.items() if not _is_digest(digest)]
    if unchecked:
        raise IndexFileError(
            f"{path}: the manifest gives no size and sha256 for {', '.join(sorted(set(unchecked)))}, so the folder "
            "cannot be checked; build the index again"
        )


def _is_digest(digest: object) -> bool:
    """Whether ``digest`` is a :data:`FileDigest`: a size (int) and a 64-digit hex sha256."""
    if not isinstance(digest, dict):
        return False
    size, sha256 = digest.get("bytes"), digest.get("sha256")
    return (
        isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
        and isinstance(sha256, str)
        and re.fullmatch(r"[0-9a-f]{64}", sha256) is not None
    )


def write_files(folder: Path, manifest: Manifest, writers: Sequence[Callable[[Path], list[str]]]) -> None:
    """Fill a new version folder: each writer puts its files into ``folder`` and returns their names; the manifest,
    with their sizes and checksums, goes last."""
    names = [name for writer in writers for name in writer(folder)]
    manifest.files = {name: file_digest(folder / name) for name in names}
    (folder / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")


# -- payloads ------------------------------------------------------------------------------------------------
def check_ids(ids: Sequence[object], id_type: str | None, where: str = "corpus") -> str | None:
    """The id type (``"int"`` or ``"str"``) of ``ids``, checked against the index's ``id_type``.

    Raises:
        DataError: an id that is neither ``int`` nor ``str``, a negative or too large int (``-1`` marks empty
            result slots), ids of both types, ids of another type than the index holds, or a repeated id.
    """
    seen: set[ExternalId] = set()
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise DataError(f"ids must be int or str, got {type(value).__name__} {value!r}", where)
        kind = "int" if isinstance(value, int) else "str"
        if isinstance(value, int) and not 0 <= value <= _INT64_MAX:
            raise DataError(f"int ids must lie in 0..2**63-1 (-1 marks empty result slots), got {value}", where)
        if id_type is None:
            id_type = kind
        elif kind != id_type:
            raise DataError(f"id {value!r} is {kind}, but the index holds {id_type} ids; use one type of id", where)
        if value in seen:
            raise DataError(f"id {value!r} occurs twice", where)
        seen.add(value)
    return id_type


class PayloadStore:
    """External ids, texts, text ids and metadata of an index's vectors, in SQLite, by internal id.

    Keeps in memory, once needed, an array of external ids and one of text ids indexed by internal id, so
    that mapping search results is one numpy ``take`` (the last element is the padding for id ``-1``).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, read_only: bool) -> None:
        self._connection = connection
        self.path = path
        self.read_only = read_only
        self._externals: list[ExternalId | None] | None = None
        self._text_ids: list[int] | None = None
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def create(cls) -> PayloadStore:
        """An empty store in a private working file (cheaper than memory for large corpora)."""
        workdir, lock = working_folder()
        connection = _working_connection(workdir / PAYLOADS_FILE)
        connection.executescript(_SCHEMA)
        connection.execute("INSERT INTO meta VALUES ('next_internal', 0), ('id_type', NULL)")
        connection.commit()
        store = cls(connection, workdir / PAYLOADS_FILE, read_only=False)
        store._own(workdir, lock)
        return store

    def _own(self, workdir: Path, lock: int) -> None:
        """Remove the working folder, and release its lock, when the store is collected or Python exits."""
        weakref.finalize(self, _close_and_remove, self._connection, workdir, lock)

    @classmethod
    def open(cls, path: Path) -> PayloadStore:
        """A saved store, read-only until the first change."""
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
            connection.execute("SELECT internal, external, text, text_id, metadata FROM items LIMIT 1").fetchall()
            connection.execute("SELECT value FROM meta WHERE key = 'next_internal'").fetchone()
        except sqlite3.DatabaseError as error:
            raise IndexFileError(f"{path}: not a readable payload database ({error})") from None
        return cls(connection, path, read_only=True)

    def _writable(self) -> sqlite3.Connection:
        """The connection, after copying a read-only saved store to a private working file."""
        if self.read_only:
            workdir, lock = working_folder()
            connection = _working_connection(workdir / PAYLOADS_FILE)
            self._connection.backup(connection)
            self._connection.close()
            self._connection, self.path, self.read_only = connection, workdir / PAYLOADS_FILE, False
            self._own(workdir, lock)
        return self._connection

    def _meta(self, key: str) -> int | str | None:
        """A value of the ``meta`` table: ``next_internal`` is an int, ``id_type`` a text or NULL."""
        return self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def _next_internal(self) -> int:
        return int(self._meta("next_internal") or 0)

    @property
    def id_type(self) -> str | None:
        value = self._meta("id_type")
        return None if value is None else str(value)

    def __len__(self) -> int:
        return int(self._connection.execute("SELECT count(*) FROM items").fetchone()[0])

    def present(self, externals: Sequence[ExternalId]) -> list[ExternalId]:
        """Those of ``externals`` that the store holds."""
        found: list[ExternalId] = []
        for chunk in _chunks(list(externals)):
            query = f"SELECT external FROM items WHERE external IN ({','.join('?' * len(chunk))})"
            found.extend(row[0] for row in self._connection.execute(query, chunk))
        return found

    def internal_ids(self, externals: Sequence[ExternalId]) -> tuple[np.ndarray, list[ExternalId]]:
        """``([m] int64 internal ids of the externals found, the externals not found)``."""
        wanted = list(externals)
        found: dict[ExternalId, int] = {}
        for chunk in _chunks(wanted):
            query = f"SELECT external, internal FROM items WHERE external IN ({','.join('?' * len(chunk))})"
            found.update(self._connection.execute(query, chunk).fetchall())
        missing = [value for value in wanted if value not in found]
        return np.array([found[value] for value in wanted if value in found], dtype=np.int64), missing

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes inside are all kept or, on an exception, all undone."""
        connection = self._writable()
        try:
            with connection:
                yield
        except BaseException:
            # the in-memory id arrays may hold rows that were rolled back: rebuild them from SQLite when needed
            self._externals = self._text_ids = None
            self._arrays = None
            raise

    def insert(
        self,
        externals: Sequence[ExternalId],
        texts: Sequence[str],
        text_ids: Sequence[int],
        metadata: Sequence[Metadata | None],
    ) -> np.ndarray:
        """Add rows (inside :meth:`transaction`); returns their ``[n]`` int64 internal ids."""
        connection = self._writable()
        start = self._next_internal()
        internal = np.arange(start, start + len(externals), dtype=np.int64)
        id_type = check_ids(externals, self.id_type)
        rows = [
            (int(i), external, text, text_id, _metadata_json(external, meta))
            for i, external, text, text_id, meta in zip(internal, externals, texts, text_ids, metadata, strict=True)
        ]
        taken = self.present(externals)
        if taken:
            raise DataError(f"id {taken[0]!r} is already in the index ({len(taken)} ids of this corpus are)")
        connection.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", rows)
        connection.execute("UPDATE meta SET value = ? WHERE key = 'next_internal'", (start + len(rows),))
        connection.execute("UPDATE meta SET value = ? WHERE key = 'id_type'", (id_type,))
        if self._externals is not None and self._text_ids is not None:
            self._externals.extend(externals)
            self._text_ids.extend(text_ids)
        self._arrays = None
        return internal

    def delete(self, internal: np.ndarray) -> None:
        """Delete rows by internal id (inside :meth:`transaction`)."""
        connection = self._writable()
        for chunk in _chunks([int(i) for i in internal]):
            connection.execute(f"DELETE FROM items WHERE internal IN ({','.join('?' * len(chunk))})", chunk)
        if self._externals is not None and self._text_ids is not None:
            for i in internal:
                self._externals[int(i)], self._text_ids[int(i)] = None, 0
        self._arrays = None

    def id_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(externals, text_ids)``, each ``[next_internal + 1]``, indexed by internal id; the last element
        (what id ``-1`` picks) and removed ids hold the padding: ``-1`` or ``None``, and text id ``0``."""
        if self._arrays is None:
            if self._externals is None or self._text_ids is None:
                size = self._next_internal()
                self._externals, self._text_ids = [None] * size, [0] * size
                for internal, external, text_id in self._connection.execute(
                    "SELECT internal, external, text_id FROM items"
                ):
                    self._externals[internal], self._text_ids[internal] = external, text_id
            if self.id_type == "int":
                externals = np.array([-1 if e is None else e for e in self._externals] + [-1], dtype=np.int64)
            else:
                externals = np.array([*self._externals, None], dtype=object)
            self._arrays = externals, np.array([*self._text_ids, 0], dtype=np.int64)
        return self._arrays

    def payloads(self, internal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texts and metadata of ``internal`` ids of any shape: two object arrays of that shape (``None`` for -1)."""
        flat = np.asarray(internal, dtype=np.int64).reshape(-1)
        found: dict[int, tuple[str, JsonValue]] = {}
        for chunk in _chunks(sorted({int(i) for i in flat if i >= 0})):
            query = f"SELECT internal, text, metadata FROM items WHERE internal IN ({','.join('?' * len(chunk))})"
            for i, text, meta in self._connection.execute(query, chunk):
                found[i] = (text, None if meta is None else json.loads(meta))
        texts = np.empty(flat.shape, dtype=object)
        metadata = np.empty(flat.shape, dtype=object)
        for position, i in enumerate(flat):
            texts[position], metadata[position] = found.get(int(i), (None, None))
        shape = np.shape(internal)
        return texts.reshape(shape), metadata.reshape(shape)

    def texts(self) -> tuple[np.ndarray, list[str]]:
        """``([n] int64 internal ids, ascending; their texts)``: every stored document (a text index's rebuild)."""
        rows = self._connection.execute("SELECT internal, text FROM items ORDER BY internal").fetchall()
        return np.array([row[0] for row in rows], dtype=np.int64), [row[1] for row in rows]

    def save(self, folder: Path) -> list[str]:
        """Copy the database into ``folder`` (SQLite's online backup: a consistent snapshot)."""
        # created here so that its mode follows the umask alone (SQLite would cap it at 0644); empty is a valid db
        os.close(os.open(folder / PAYLOADS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        target = sqlite3.connect(folder / PAYLOADS_FILE)
        try:
            self._connection.backup(target)
        finally:
            target.close()
        return [PAYLOADS_FILE]


def _working_connection(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path)
    # a private working copy: a crash loses it anyway (the saved folder is the durable copy), so skip fsync;
    # the journal stays (in memory) because transactions must still roll back
    connection.execute("PRAGMA synchronous = OFF")
    connection.execute("PRAGMA journal_mode = MEMORY")
    return connection


def working_folder() -> tuple[Path, int]:
    """A new locked ``embedkit-index-*`` folder in the temporary folder, after removing those whose process died
    (a killed process cannot clean up after itself, and each of its folders may hold a whole corpus)."""
    temp = Path(tempfile.gettempdir())
    for leftover in temp.glob(f"{WORKDIR_PREFIX}*"):
        remove_if_abandoned(leftover)
    return owned_directory(temp, WORKDIR_PREFIX, mode=0o700)  # private: it holds the corpus's texts


def _close_and_remove(connection: sqlite3.Connection, workdir: Path, lock: int) -> None:
    connection.close()
    shutil.rmtree(workdir, ignore_errors=True)
    os.close(lock)


def _chunks(values: list[_Value]) -> Iterator[list[_Value]]:
    for start in range(0, len(values), _SQL_VARIABLES):
        yield values[start : start + _SQL_VARIABLES]


def _metadata_json(external: ExternalId, metadata: Metadata | None) -> str | None:
    if metadata is None:
        return None
    try:
        return json.dumps(metadata, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise DataError(f"the metadata of id {external!r} is not JSON-serialisable: {error}") from None
