"""Embedding vectors at the size a format promises: `fit_dimensions`, a fixed random projection
(docs/formats.md says why it keeps similarities), and `unit`."""

from __future__ import annotations

import functools
import math
import zlib


def fit_dimensions(vector: list[float], size: int) -> list[float]:
    """`vector` mapped to `size` dimensions by a fixed random projection: unchanged when it already
    has that size; dot products and cosines kept exactly when growing, approximately
    (Johnson-Lindenstrauss) when shrinking. Deterministic."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not vector:
        raise ValueError("cannot fit an empty vector")
    if len(vector) == size:
        return [float(x) for x in vector]
    import numpy as np

    projected = _projection(len(vector), size) @ np.asarray(vector, dtype=np.float64)
    return projected.tolist()


@functools.lru_cache(maxsize=16)
def _projection(source: int, target: int):
    """A (target, source) matrix: orthonormal columns when target > source, else orthonormal
    rows scaled by sqrt(source / target); drawn from numpy's frozen RandomState stream seeded by
    the sizes, and made unique by QR with a positive diagonal."""
    import numpy as np

    seed = zlib.crc32(f"bedrock-local/fit_dimensions/{source}->{target}".encode())
    tall, narrow = max(source, target), min(source, target)
    gaussian = np.random.RandomState(seed).standard_normal((tall, narrow))
    q, r = np.linalg.qr(gaussian)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # the unique QR: independent of the LAPACK in use
    matrix = q if target > source else q.T * math.sqrt(source / target)
    matrix.setflags(write=False)
    return matrix


def unit(vector: list[float]) -> list[float]:
    """`vector` at length 1 (a zero vector stays as it is)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector
