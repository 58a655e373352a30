"""Small generated datasets in the real file formats, for the harness tests."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        Path(path).write_bytes(data)


def write_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """Four IDX files (train gzipped, test raw) of random 28×28 images, labels 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return folder


def write_cifar_archive(folder: Path, per_batch: int = 6, seed: int = 0) -> Path:
    """A cifar-10-python.tar.gz in the standard layout: 5 training batches and a test batch,
    each a pickled dict with b"data" (N×3072 uint8 numpy) and b"labels" (list)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
            batch = {b"batch_label": name.encode(),
                     b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                     b"labels": [int(v) for v in (np.arange(per_batch) + i) % 10]}
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path
