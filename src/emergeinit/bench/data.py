"""Image datasets as whole tensors on the training device: Fashion-MNIST (IDX files) and CIFAR-10
(the standard python archive).

Images stay uint8 (N, C, H, W) on the device; batches are converted, augmented and normalized
there (see :mod:`emergeinit.bench.augment`), so training never touches per-sample Python or
DataLoader workers. A missing or corrupt dataset raises :class:`DatasetError`, whose message says
how to get the data.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

__all__ = [
    "DatasetError",
    "ImageData",
    "DATASETS",
    "load_dataset",
    "load_fashion_mnist",
    "load_cifar10",
    "read_idx",
    "FASHION_MNIST_DIR",
    "CIFAR10_MD5",
]

PathLike = Union[str, os.PathLike]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# md5 of the original .gz files (Debian's recompressed copies differ; they are checked by content)
FASHION_MNIST_FILES: Dict[str, Tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

_FMNIST_HELP = (
    "Get Fashion-MNIST with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files in "
    f"{FASHION_MNIST_DIR}), or pass --data-dir DIR holding the four IDX files "
    "(train-images-idx3-ubyte[.gz], ...), or add --download to fetch them from "
    f"{FASHION_MNIST_URL}"
)
_CIFAR_HELP = (
    f"Get CIFAR-10 with --download (fetches {CIFAR10_URL}, md5 {CIFAR10_MD5}), or put "
    f"{CIFAR10_ARCHIVE} (or its extracted cifar-10-batches-py/) in the folder given by --data-dir"
)


class DatasetError(RuntimeError):
    """A dataset is missing or corrupt; the message says how to get it."""


@dataclass
class ImageData:
    """A classification dataset as tensors: uint8 images (N, C, H, W), int64 labels, and the
    per-channel mean and std (of the training images, in [0, 1] units) used to normalize them."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int = 10

    def to(self, device: Union[str, torch.device]) -> "ImageData":
        move = lambda t: t.to(device)  # noqa: E731
        return ImageData(self.name, move(self.train_x), move(self.train_y), move(self.test_x),
                         move(self.test_y), move(self.mean), move(self.std), self.num_classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 255] float) images -> float32, standardized per channel."""
        x = x.float().div_(255.0)
        return x.sub_(self.mean.view(1, -1, 1, 1)).div_(self.std.view(1, -1, 1, 1))


def _channel_stats(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    x = x.to(torch.float64) / 255.0
    dims = (0, 2, 3)
    return x.mean(dim=dims).float(), x.std(dim=dims).float()


# ------------------------------------------------------------------------------------------ IDX

def read_idx(path: PathLike) -> torch.Tensor:
    """An IDX file (raw or .gz) of unsigned bytes as a uint8 tensor of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DatasetError(f"{path}: only unsigned-byte IDX files are supported (type 0x{data[2]:02x})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = 1
    for d in shape:
        count *= d
    if len(data) - header != count:
        raise DatasetError(
            f"{path} is corrupt: header says {shape} ({count} bytes), file has {len(data) - header}"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _download(url: str, target: Path, md5: Optional[str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except OSError as err:
            os.unlink(tmp.name)
            raise DatasetError(f"download of {url} failed: {err}") from err
    if md5 is not None and _md5(Path(tmp.name)) != md5:
        os.unlink(tmp.name)
        raise DatasetError(f"download of {url} has the wrong checksum (expected md5 {md5})")
    os.replace(tmp.name, target)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_dir(name: str) -> Path:
    root = os.environ.get("EMERGEINIT_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "emergeinit")
    return Path(root) / name


def load_fashion_mnist(data_dir: Optional[PathLike] = None, *, download: bool = False,
                       pad32: bool = False, half: bool = False) -> ImageData:
    """Fashion-MNIST, 60k/10k, from ``data_dir`` (default: the Debian package's folder, then the
    download cache). ``pad32``: zero-pad to 32×32 and repeat to 3 channels for CIFAR-shaped nets.
    ``half``: zero-pad to 32×32, then 2×2 average-pool to 16×16, one channel (rounded back to
    uint8): the CIFAR-shaped nets at a quarter of the compute, for CPU-sized studies."""
    if pad32 and half:
        raise ValueError("pad32 and half are two different layouts: pick one")
    candidates = [Path(data_dir)] if data_dir is not None else [FASHION_MNIST_DIR, _cache_dir("fashion-mnist")]
    folder = next((c for c in candidates if all(_find_idx(c, s) for s, _ in FASHION_MNIST_FILES.values())), None)
    if folder is None and download:
        folder = candidates[-1]
        for stem, md5 in FASHION_MNIST_FILES.values():
            if _find_idx(folder, stem) is None:
                _download(FASHION_MNIST_URL + stem + ".gz", folder / (stem + ".gz"), md5)
    if folder is None:
        looked = ", ".join(str(c) for c in candidates)
        raise DatasetError(f"Fashion-MNIST not found (looked in {looked}). {_FMNIST_HELP}")
    try:
        parts = {key: read_idx(_find_idx(folder, stem)) for key, (stem, _) in FASHION_MNIST_FILES.items()}
    except DatasetError as err:
        raise DatasetError(f"{err}. {_FMNIST_HELP}") from err
    for split in ("train", "test"):
        x, y = parts[f"{split}_images"], parts[f"{split}_labels"]
        if x.dim() != 3 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise DatasetError(f"Fashion-MNIST {split} files disagree: images {tuple(x.shape)}, "
                               f"labels {tuple(y.shape)}. {_FMNIST_HELP}")
    train_x, test_x = parts["train_images"].unsqueeze(1), parts["test_images"].unsqueeze(1)
    if pad32 or half:
        train_x, test_x = (torch.nn.functional.pad(x, (2, 2, 2, 2)) for x in (train_x, test_x))
    if half:
        train_x, test_x = (_avg_pool2_uint8(x) for x in (train_x, test_x))
    mean, std = _channel_stats(train_x)  # on one channel: the three copies share it
    if pad32:
        train_x, test_x = (x.expand(-1, 3, -1, -1).contiguous() for x in (train_x, test_x))
        mean, std = mean.repeat(3), std.repeat(3)
    name = "fashion-mnist-32" if pad32 else "fashion-mnist-16" if half else "fashion-mnist"
    return ImageData(name, train_x, parts["train_labels"].long(), test_x, parts["test_labels"].long(), mean, std)


def _avg_pool2_uint8(x: torch.Tensor, chunk: int = 10000) -> torch.Tensor:
    """2×2 average pooling of uint8 images, rounded to the nearest uint8 (in chunks: little memory)."""
    out = [torch.nn.functional.avg_pool2d(part.float(), 2).round_().to(torch.uint8) for part in x.split(chunk)]
    return torch.cat(out)


# ------------------------------------------------------------------------------------- CIFAR-10

def _unpickle(raw: bytes, what: str) -> Tuple[torch.Tensor, torch.Tensor]:
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data, labels = batch[b"data"], batch[b"labels"]
    except Exception as err:  # corrupt member: say which
        raise DatasetError(f"CIFAR-10 member {what} is corrupt ({type(err).__name__}: {err}). {_CIFAR_HELP}") from err
    x = torch.as_tensor(bytearray(bytes(data)) if isinstance(data, (bytes, bytearray)) else data, dtype=torch.uint8)
    return x.reshape(-1, 3, 32, 32), torch.as_tensor(list(labels), dtype=torch.int64)


def load_cifar10(data_dir: Optional[PathLike] = None, *, download: bool = False,
                 md5: Optional[str] = "standard") -> ImageData:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` (checksum verified against ``md5``: "standard"
    is :data:`CIFAR10_MD5`, None skips the check) or its extracted ``cifar-10-batches-py/`` in
    ``data_dir`` (default: the download cache)."""
    if md5 == "standard":
        md5 = CIFAR10_MD5
    folder = Path(data_dir) if data_dir is not None else _cache_dir("cifar10")
    archive, extracted = folder / CIFAR10_ARCHIVE, folder / "cifar-10-batches-py"
    if not archive.is_file() and not extracted.is_dir():
        if not download:
            raise DatasetError(f"CIFAR-10 not found in {folder}. {_CIFAR_HELP}")
        _download(CIFAR10_URL, archive, md5)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    members: Dict[str, bytes] = {}
    if archive.is_file():
        if md5 is not None and _md5(archive) != md5:
            raise DatasetError(f"{archive} has the wrong checksum (expected md5 {md5}): it is "
                               f"corrupt or not the standard archive. {_CIFAR_HELP}")
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar.getmembers():
                    base = member.name.rsplit("/", 1)[-1]
                    if base in names and member.isfile():
                        members[base] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DatasetError(f"{archive} is corrupt ({err}). {_CIFAR_HELP}") from err
    else:
        members = {n: (extracted / n).read_bytes() for n in names if (extracted / n).is_file()}
    missing = [n for n in names if n not in members]
    if missing:
        raise DatasetError(f"CIFAR-10 in {folder} lacks {', '.join(missing)}. {_CIFAR_HELP}")
    train = [_unpickle(members[n], n) for n in names[:-1]]
    test_x, test_y = _unpickle(members["test_batch"], "test_batch")
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    mean, std = _channel_stats(train_x)
    return ImageData("cifar10", train_x, train_y, test_x, test_y, mean, std)


# ---------------------------------------------------------------------------------------- by name

DATASETS = ("cifar10", "fashion-mnist", "fashion-mnist-32", "fashion-mnist-16")


def _load_cpu(name: str, data_dir: Optional[PathLike], download: bool) -> ImageData:
    if name == "cifar10":
        return load_cifar10(data_dir, download=download)
    if name in ("fashion-mnist", "fashion-mnist-32", "fashion-mnist-16"):
        return load_fashion_mnist(data_dir, download=download, pad32=name.endswith("-32"),
                                  half=name.endswith("-16"))
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


@functools.lru_cache(maxsize=2)
def _load_cached(name: str, data_dir: Optional[str], download: bool, device: str) -> ImageData:
    return _load_cpu(name, data_dir, download).to(device)


def load_dataset(name: str, data_dir: Optional[PathLike] = None, *, download: bool = False,
                 device: Union[str, torch.device] = "cpu") -> ImageData:
    """A dataset by name, on ``device``. The last two loads are cached, so a grid reads each
    dataset once per process; the tensors are shared and must not be modified."""
    return _load_cached(name, None if data_dir is None else str(data_dir), bool(download), str(device))
