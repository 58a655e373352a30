"""``emergeinit measure``: the command that measures E of a model on real or random data."""

import argparse
import json

import pytest

from _bench_helpers import write_fashion_mnist
from emergeinit.bench.commands import measure as measure_cmd
from emergeinit.bench.data import FASHION_MNIST_DIR


# ---------------------------------------------------------------------------------------- CLI

def cli(argv):
    parser = argparse.ArgumentParser()
    measure_cmd.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_json_random_data(capsys):
    assert measure_cmd.main(cli(["--model", "mlp", "--init", "none", "--data", "random", "--batch", "8",
                                 "--mode", "mean", "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "mlp" and out["init"] == "none"
    assert [l["nodes"] for l in out["layers"]] == [512, 256, 128, 10]
    assert out["samples"] == 8 and isinstance(out["value"], int)


def test_cli_user_factory_and_tables(capsys, tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert measure_cmd.main(cli(["--model", "mynets:build", "--init", "none", "--data", "random", "--batch", "4"])) == 0
    text = capsys.readouterr().out
    assert "mynets:build · init none" in text and "E = " in text
    assert [line.split()[1] for line in text.splitlines()[2:4]] == ["0", "2"]  # Sequential names


def test_fashion_images_fit_each_model_shape(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=12, n_test=6)
    assert measure_cmd.fashion_images(str(folder), 4, (3, 32, 32)).shape == (4, 3, 32, 32)
    assert measure_cmd.fashion_images(str(folder), 4, (784,)).shape == (4, 784)
    assert measure_cmd.fashion_images(str(folder), 4, (1, 28, 28)).shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="cannot feed"):
        measure_cmd.fashion_images(str(folder), 4, (3, 64, 64))


@pytest.mark.integration
def test_fashion_mnist_mlp(capsys):
    if not FASHION_MNIST_DIR.is_dir():
        pytest.fail("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    images = measure_cmd.fashion_images(None, 64, (1, 28, 28))
    assert images.shape == (64, 1, 28, 28)
    assert abs(float(images.mean())) < 0.3 and 0.7 < float(images.std()) < 1.3  # normalized
    assert measure_cmd.main(cli(["--model", "mlp", "--init", "none", "--batch", "64", "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == "fashion-mnist" and len(out["layers"]) == 4 and out["log10"] > 0
