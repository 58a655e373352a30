import hashlib

import numpy as np
import pytest
import torch

from _bench_helpers import write_cifar_archive, write_fashion_mnist, write_idx
from emergeinit.bench.data import (
    DatasetError,
    FASHION_MNIST_DIR,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    read_idx,
)


def test_read_idx_raw_and_gz_round_trip(tmp_path):
    a = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "raw", a, gz=False)
    write_idx(tmp_path / "zip", a, gz=True)
    for p in (tmp_path / "raw", tmp_path / "zip.gz"):
        t = read_idx(p)
        assert t.dtype == torch.uint8 and tuple(t.shape) == (2, 3, 5)
        assert torch.equal(t, torch.from_numpy(a))


def test_read_idx_rejects_truncated_file(tmp_path):
    write_idx(tmp_path / "f", np.zeros((4, 28, 28), np.uint8), gz=False)
    data = (tmp_path / "f").read_bytes()
    (tmp_path / "f").write_bytes(data[:-10])
    with pytest.raises(DatasetError, match="corrupt"):
        read_idx(tmp_path / "f")


def test_fashion_mnist_from_folder_and_padded(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=30, n_test=10)
    d = load_fashion_mnist(folder)
    assert tuple(d.train_x.shape) == (30, 1, 28, 28) and tuple(d.test_x.shape) == (10, 1, 28, 28)
    assert d.train_y.tolist() == [i % 10 for i in range(30)]
    p = load_fashion_mnist(folder, pad32=True)
    assert tuple(p.train_x.shape) == (30, 3, 32, 32)
    assert torch.equal(p.train_x[:, 1, 2:30, 2:30], d.train_x[:, 0])  # copied image, zero border
    assert int(p.train_x[:, :, :2].sum()) == 0 and torch.equal(p.train_x[:, 0], p.train_x[:, 2])
    # stats: over the padded pixels, in [0, 1] units
    x = p.train_x[:, 0].double() / 255
    assert torch.allclose(p.mean, x.mean().float().repeat(3)) and torch.allclose(p.std, x.std().float().repeat(3))


def test_fashion_mnist_16_is_the_padded_image_average_pooled(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=30, n_test=10)
    d = load_fashion_mnist(folder)
    h = load_dataset("fashion-mnist-16", folder)
    assert h.name == "fashion-mnist-16" and tuple(h.train_x.shape) == (30, 1, 16, 16)
    assert h.train_x.dtype == torch.uint8 and tuple(h.test_x.shape) == (10, 1, 16, 16)
    padded = torch.nn.functional.pad(d.train_x.double(), (2, 2, 2, 2))
    # pixel (i, j) is the rounded mean of the 2x2 block at (2i, 2j) of the zero-padded 32x32 image
    block = padded[:, :, 10:12, 14:16].mean(dim=(2, 3))
    assert torch.equal(h.train_x[:, :, 5, 7].double(), block.round())
    assert int(h.train_x[:, :, 0, :].sum()) == 0  # the first row pools two rows of zero padding
    x = h.train_x.double() / 255
    assert torch.allclose(h.mean, x.mean().float().reshape(1)) and torch.allclose(h.std, x.std().float().reshape(1))
    with pytest.raises(ValueError, match="pick one"):
        load_fashion_mnist(folder, pad32=True, half=True)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_fashion_mnist(tmp_path / "nothing")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "--download" in msg


def test_cifar_archive_loads_with_its_checksum(tmp_path):
    path = write_cifar_archive(tmp_path, per_batch=6)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    d = load_cifar10(tmp_path, md5=md5)
    assert tuple(d.train_x.shape) == (30, 3, 32, 32) and tuple(d.test_x.shape) == (6, 3, 32, 32)
    assert d.train_y[:6].tolist() == [0, 1, 2, 3, 4, 5] and d.train_y[6:12].tolist() == [1, 2, 3, 4, 5, 6]
    assert d.test_y.tolist() == [5, 6, 7, 8, 9, 0]
    assert d.mean.shape == (3,) and bool((d.std > 0).all())


def test_cifar_wrong_checksum_and_missing_are_clear_errors(tmp_path):
    write_cifar_archive(tmp_path)
    with pytest.raises(DatasetError, match="wrong checksum.*--download"):
        load_cifar10(tmp_path)  # the standard md5: this generated archive is not it
    with pytest.raises(DatasetError, match="CIFAR-10 not found.*--download"):
        load_cifar10(tmp_path / "empty")


def test_cifar_corrupt_archive(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar file at all")
    with pytest.raises(DatasetError, match="corrupt"):
        load_cifar10(tmp_path, md5=None)


def test_load_dataset_puts_tensors_on_device_and_caches(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm2", n_train=20, n_test=10)
    a = load_dataset("fashion-mnist-32", folder, device="cpu")
    b = load_dataset("fashion-mnist-32", folder, device="cpu")
    assert a is b and a.train_x.device.type == "cpu" and a.name == "fashion-mnist-32"
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


@pytest.mark.integration
def test_real_fashion_mnist():
    d = load_fashion_mnist(FASHION_MNIST_DIR)
    assert tuple(d.train_x.shape) == (60000, 1, 28, 28) and tuple(d.test_x.shape) == (10000, 1, 28, 28)
    assert torch.bincount(d.train_y).tolist() == [6000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
