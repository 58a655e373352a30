import torch

from emergeinit.bench.augment import cutout, random_crop, random_flip


def labelled_batch(n=16, c=3, h=32, w=32):
    """Each image is filled with its label + 1, so any mixing of samples would show."""
    labels = torch.arange(n) % 10
    x = (labels + 1).view(n, 1, 1, 1).expand(n, c, h, w).to(torch.uint8).clone()
    return x, labels


def test_crop_flip_cutout_keep_shape_and_label_alignment():
    x, y = labelled_batch()
    g = torch.Generator().manual_seed(0)
    out = cutout(random_flip(random_crop(x, 4, g), g).float(), 16, g)
    assert out.shape == x.shape
    for i in range(x.shape[0]):
        values = set(out[i].unique().tolist()) - {0.0}
        assert values == {float(y[i] + 1)}


def test_crop_is_a_window_of_the_padded_image():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 255, (8, 2, 10, 12), dtype=torch.uint8, generator=g)
    out = random_crop(x, 3, torch.Generator().manual_seed(2))
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    for i in range(8):
        hits = [(a, b) for a in range(7) for b in range(7)
                if torch.equal(padded[i, :, a:a + 10, b:b + 12], out[i])]
        assert len(hits) == 1
    offsets_seen = {tuple(torch.nonzero(out[i, 0] != 0)[0].tolist()) for i in range(8)}
    assert len(offsets_seen) > 1  # not the same shift for every sample
    assert torch.equal(random_crop(x, 0), x)


def test_flip_probability_extremes_and_reproducible():
    x = torch.randn(5, 3, 4, 6)
    assert torch.equal(random_flip(x, p=1.0), x.flip(3))
    assert torch.equal(random_flip(x, p=0.0), x)
    a = random_flip(x, torch.Generator().manual_seed(7))
    b = random_flip(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_cutout_zeroes_one_clipped_square_per_sample():
    x = torch.ones(200, 1, 32, 32)
    out = cutout(x, 16, torch.Generator().manual_seed(3))
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert int(zeros.min()) >= 64 and int(zeros.max()) == 256  # a corner keeps 8×8, inside 16×16
    for i in range(0, 200, 25):  # the zeros form one axis-aligned rectangle
        rows = torch.nonzero((out[i, 0] == 0).any(1)).flatten()
        cols = torch.nonzero((out[i, 0] == 0).any(0)).flatten()
        assert int(zeros[i]) == len(rows) * len(cols)
        assert rows.tolist() == list(range(int(rows[0]), int(rows[-1]) + 1))
    assert torch.equal(cutout(x, 0), x)
