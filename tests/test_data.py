"""Tests for advjax.data: readers, sources, download, batching and augmentation."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import tarfile
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from advjax.data import (
    DATASETS,
    Dataset,
    download,
    eval_batches,
    load_dataset,
    pad_crop_flip,
    split_validation,
    steps_per_epoch,
    train_batches,
)
from advjax.data.cifar import CifarFormatError
from advjax.data.download import ChecksumError, md5sum
from advjax.data.idx import IdxFormatError, parse_idx, read_idx


def _shared_mnist() -> Path | None:
    candidates = [Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"]
    if os.environ.get("ADVJAX_SHARED_DIR"):
        candidates.append(Path(os.environ["ADVJAX_SHARED_DIR"]) / "data" / "mnist")
    for c in candidates:
        if (c / "train-images-idx3-ubyte.gz").is_file():
            return c
    return None


SHARED_MNIST = _shared_mnist()
needs_mnist = pytest.mark.skipif(SHARED_MNIST is None, reason="shared MNIST files not found")

# Canonical MNIST class counts.
MNIST_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No ambient data dirs or proxies leak into tests."""
    monkeypatch.delenv("ADVJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_empty"))
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape
    )
    return header + arr.tobytes()


# ---------------------------------------------------------------- IDX / MNIST


@needs_mnist
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_shared_mnist(split, n):
    ds = load_dataset("mnist", split, data_dir=SHARED_MNIST, source="local")
    assert len(ds) == n and ds.images.shape == (n, 28, 28, 1)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert np.bincount(ds.labels, minlength=10).tolist() == MNIST_COUNTS[split]
    assert ds.num_classes == 10 and ds.name == "mnist"
    assert 0 < ds.images.mean() < 255 and ds.images.max() == 255


@needs_mnist
def test_mnist_found_through_env_subfolder(monkeypatch):
    monkeypatch.setenv("ADVJAX_DATA_DIR", str(SHARED_MNIST.parent))  # finds <dir>/mnist/
    ds = load_dataset("mnist", "test")
    assert len(ds) == 10000


def test_idx_roundtrip_plain_gzip_and_types(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a", expected_magic=0x803), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    ints = np.array([-1, 2, 70000], dtype=">i4")
    np.testing.assert_array_equal(parse_idx(_idx_bytes(ints, 0x0C)), [-1, 2, 70000])


def test_idx_corruption_errors(tmp_path):
    good = _idx_bytes(np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(IdxFormatError, match="bad IDX magic"):
        parse_idx(b"\x12\x34" + good[2:])
    with pytest.raises(IdxFormatError, match="expected 0x00000801"):
        parse_idx(good, expected_magic=0x801)
    with pytest.raises(IdxFormatError, match="truncated"):
        parse_idx(good[:-1])
    with pytest.raises(IdxFormatError, match="truncated IDX header"):
        parse_idx(good[:9])
    with pytest.raises(IdxFormatError, match="trailing"):
        parse_idx(good + b"\x00")
    (tmp_path / "t.gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(IdxFormatError, match="gzip"):
        read_idx(tmp_path / "t.gz")


def test_mnist_local_count_mismatch(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(np.zeros(4, np.uint8)))
    )
    with pytest.raises(IdxFormatError, match="3 images but .* 4 labels"):
        load_dataset("mnist", "test", data_dir=tmp_path)


# ---------------------------------------------------------------- CIFAR / SVHN


def _cifar_records(rng, n, label_bytes):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (n, label_bytes), dtype=np.uint8)
    rows = [
        lab.tobytes() + img.transpose(2, 0, 1).tobytes()
        for lab, img in zip(labels, images, strict=True)
    ]
    return b"".join(rows), images, labels


def _write_cifar10(folder: Path, rng):
    folder.mkdir(parents=True)
    expected = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for i, fname in enumerate(names):
        data, images, labels = _cifar_records(rng, 2 + i % 2, 1)
        (folder / fname).write_bytes(data)
        split = "test" if fname.startswith("test") else "train"
        expected[split][0].append(images)
        expected[split][1].append(labels[:, 0])
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in expected.items()}


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10_binary(tmp_path, as_archive):
    rng = np.random.default_rng(0)
    expected = _write_cifar10(tmp_path / "src" / "cifar-10-batches-bin", rng)
    root = tmp_path / "data"
    if as_archive:
        root.mkdir()
        with tarfile.open(root / "cifar-10-binary.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    else:
        (tmp_path / "src").rename(root)
    for split in ("train", "test"):
        ds = load_dataset("cifar10", split, data_dir=root, source="local")
        np.testing.assert_array_equal(ds.images, expected[split][0])  # CHW -> HWC
        np.testing.assert_array_equal(ds.labels, expected[split][1])
        assert ds.labels.dtype == np.int32 and ds.num_classes == 10


def test_cifar100_uses_fine_label_and_subfolder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar100" / "cifar-100-binary"
    folder.mkdir(parents=True)
    data, images, labels = _cifar_records(rng, 3, 2)
    (folder / "test.bin").write_bytes(data)
    ds = load_dataset("cifar100", "test", data_dir=tmp_path, source="local")
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels[:, 1])
    assert ds.num_classes == 100


def test_cifar_truncated_file(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "test.bin").write_bytes(b"\x00" * 3073)
    with pytest.raises(CifarFormatError, match="whole number"):
        load_dataset("cifar100", "test", data_dir=tmp_path)


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    x = np.random.default_rng(2).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [10]])})
    ds = load_dataset("svhn", "test", data_dir=tmp_path, source="local")
    np.testing.assert_array_equal(ds.images[1], x[..., 1])
    assert ds.labels.tolist() == [0, 1, 2, 0]


# ---------------------------------------------------------------- tfds, errors, synthetic


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock(name, shape, tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset(name, "train", source="tfds")
        auto = load_dataset(name, "test", data_dir=tmp_path)  # no local files -> tfds
    for d in (ds, auto):
        assert d.images.shape == (5, *shape) and d.images.dtype == np.uint8
        assert d.labels.shape == (5,) and d.labels.dtype == np.int32
        assert d.num_classes == 10 and d.name == name


def test_missing_data_lists_places(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", "train", data_dir=empty)
    msg = str(info.value)
    for needle in (
        str(empty),
        str(empty / "mnist"),
        str(tmp_path / "tfds_empty"),
        "ADVJAX_DATA_DIR",
        "config.data.data_dir",
        "train-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "advjax.data.download('mnist'",
        "tfds build mnist",
    ):
        assert needle in msg, needle
    with pytest.raises(FileNotFoundError, match="ADVJAX_DATA_DIR is not set"):
        load_dataset("cifar10", "test", source="local")


def test_unknown_name_and_split():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet", "train")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid splits"):
        load_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="valid sources"):
        load_dataset("mnist", "train", source="web")


def test_synthetic_deterministic_and_learnable():
    a = load_dataset("synthetic", "train", num_examples=400, seed=3)
    b = load_dataset("synthetic", "train", num_examples=400, seed=3)
    test = load_dataset("synthetic", "test", num_examples=200, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (400, 28, 28, 1) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int32 and a.num_classes == 10
    means = np.stack([a.images[a.labels == k].mean(0) for k in range(10)]).reshape(10, -1)
    x = test.images.reshape(len(test), -1).astype(np.float64)
    pred = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == test.labels).mean() > 0.9
    c = load_dataset("cifar10", "train", source="synthetic", num_examples=8)
    assert c.images.shape == (8, 32, 32, 3)
    small = load_dataset("synthetic", "test", num_examples=6, image_shape=(8, 8, 3), num_classes=4)
    assert small.images.shape == (6, 8, 8, 3) and small.labels.max() < 4


def test_dataset_validation():
    with pytest.raises(ValueError, match="uint8"):
        Dataset(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32), 10, "x")
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        Dataset(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int32), 10, "x")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        Dataset(np.zeros((1, 4, 4, 1), np.uint8), np.array([10]), 10, "x")
    ok = Dataset(np.zeros((1, 4, 4, 1), np.uint8), np.array([3], np.int64), 10, "x")
    assert ok.labels.dtype == np.int32 and len(ok) == 1


# ---------------------------------------------------------------- pipeline


def _tiny(n=10) -> Dataset:
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 1))
    return Dataset(np.ascontiguousarray(images), np.arange(n) % 3, 3, "tiny")


def _ids(batch) -> np.ndarray:
    """Example ids from _tiny images (pixel value = index)."""
    return np.rint(batch["image"][..., 0, 0, 0] * 255).astype(int).reshape(-1)


def test_split_validation():
    ds = _tiny(20)
    train, val = split_validation(ds, 5, seed=0)
    train2, val2 = split_validation(ds, 5, seed=0)
    assert len(train) == 15 and len(val) == 5
    np.testing.assert_array_equal(val.images, val2.images)
    ids = np.concatenate([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]])
    assert sorted(ids.tolist()) == list(range(20))
    _, val3 = split_validation(ds, 5, seed=1)
    assert not np.array_equal(val.images, val3.images)
    with pytest.raises(ValueError):
        split_validation(ds, 20, seed=0)


def test_train_batches_determinism_epochs_and_resume():
    ds = _tiny(10)
    assert steps_per_epoch(10, 4) == 2
    kw = dict(global_batch_size=4, seed=7, process_index=0, process_count=1, local_device_count=2)
    it = train_batches(ds, **kw)
    stream = [next(it) for _ in range(7)]
    b = stream[0]
    assert b["image"].shape == (2, 2, 2, 2, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (2, 2) and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["label"].reshape(-1), _ids(b) % 3)
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    again = train_batches(ds, **kw)
    for s in stream:
        np.testing.assert_array_equal(_ids(s), _ids(next(again)))
    for epoch in range(3):  # each epoch: 8 distinct examples, the permutation's first 8
        ids = np.concatenate([_ids(s) for s in stream[2 * epoch : 2 * epoch + 2]])
        perm = np.random.default_rng([7, epoch]).permutation(10)
        np.testing.assert_array_equal(ids, perm[:8])
    for k in (1, 2, 3, 5):  # resume mid-epoch and across epoch boundaries
        resumed = train_batches(ds, start_step=k, **kw)
        for s in stream[k:]:
            np.testing.assert_array_equal(_ids(s), _ids(next(resumed)))


def test_every_example_once_per_epoch():
    ds = _tiny(12)
    it = train_batches(ds, 4, seed=1, process_index=0, process_count=1, local_device_count=1)
    for _ in range(2):
        ids = np.concatenate([_ids(next(it)) for _ in range(3)])
        assert sorted(ids.tolist()) == list(range(12))


def test_host_slicing_and_layout_errors():
    ds = _tiny(16)
    one_host = dict(process_index=0, process_count=1, local_device_count=1)
    full = next(train_batches(ds, 8, seed=3, **one_host))
    halves = [
        next(train_batches(ds, 8, seed=3, process_index=p, process_count=2, local_device_count=2))
        for p in range(2)
    ]
    assert halves[0]["image"].shape == (2, 2, 2, 2, 1)
    np.testing.assert_array_equal(np.concatenate([_ids(h) for h in halves]), _ids(full))
    with pytest.raises(ValueError, match="multiple of process_count"):
        train_batches(ds, 6, seed=0, process_index=0, process_count=2, local_device_count=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train_batches(ds, 32, seed=0, process_index=0, process_count=1, local_device_count=1)
    default = next(train_batches(ds, 4 * jax.local_device_count(), seed=0))
    assert default["image"].shape[0] == jax.local_device_count()


def test_eval_batches_mask_covers_each_once():
    ds = _tiny(11)
    seen = []
    for p in range(2):
        for b in eval_batches(ds, 8, process_index=p, process_count=2, local_device_count=2):
            assert b["image"].shape == (2, 2, 2, 2, 1) and b["mask"].shape == (2, 2)
            assert b["mask"].dtype == np.float32
            mask = b["mask"].reshape(-1).astype(bool)
            seen += _ids(b)[mask].tolist()
            assert np.all(_ids(b)[~mask] == 0) and np.all(b["label"].reshape(-1)[~mask] == 0)
    assert sorted(seen) == list(range(11))
    batches = list(eval_batches(ds, 4, process_index=0, process_count=1, local_device_count=1))
    assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 11
    np.testing.assert_array_equal(_ids(batches[0]), [0, 1, 2, 3])  # in order


# ---------------------------------------------------------------- augmentation


def test_pad_crop_flip():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.01, 1.0, (6, 5, 5, 2)).astype(np.float32)
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(pad_crop_flip(key, x, pad=0, flip=False), x)
    flipped = np.asarray(pad_crop_flip(key, x, pad=0))
    for i in range(6):
        assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])
    pad = 2
    out = np.asarray(jax.jit(pad_crop_flip, static_argnames="pad")(key, x, pad=pad))
    np.testing.assert_array_equal(out, pad_crop_flip(key, x, pad=pad))
    assert out.shape == x.shape and out.dtype == np.float32
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for i in range(6):  # each output is one crop of the zero-padded image, maybe mirrored
        span = range(2 * pad + 1)
        crops = [padded[i, dy : dy + 5, dx : dx + 5] for dy in span for dx in span]
        candidates = crops + [c[:, ::-1] for c in crops]
        assert any(np.array_equal(out[i], c) for c in candidates)
        inside = out[i][out[i] > 0]  # crop pixels come from the image (zeros are padding)
        assert np.isin(inside, x[i]).all()
    keys = jax.random.split(key, 2)
    assert not np.array_equal(pad_crop_flip(keys[0], x), pad_crop_flip(keys[1], x))
    assert pad_crop_flip(key, x, mode="reflect").shape == x.shape


# ---------------------------------------------------------------- download


@pytest.fixture
def http_dir(tmp_path):
    """Serves a folder over HTTP on 127.0.0.1 (ephemeral port); yields (folder, url, log)."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


SHARED_MD5 = {
    "train-images-idx3-ubyte.gz": "cca5a2480530c91fbcc4f0ac2eb7efb5",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


@needs_mnist
def test_download_shared_mnist(http_dir, tmp_path):
    root, url, requests = http_dir
    for fname in SHARED_MD5:
        os.symlink(SHARED_MNIST / fname, root / fname)
    out = tmp_path / "downloaded"
    paths = download("mnist", out, base_url=url, checksums=SHARED_MD5, timeout=10)
    assert sorted(p.name for p in paths) == sorted(SHARED_MD5)
    for p in paths:
        assert md5sum(p) == SHARED_MD5[p.name]
    assert len(requests) == 4
    download("mnist", out, base_url=url, checksums=SHARED_MD5, timeout=10)
    assert len(requests) == 4  # all present with the right checksum: skipped
    assert len(load_dataset("mnist", "test", data_dir=out)) == 10000


def test_download_made_up_files_and_checksum_failure(http_dir, tmp_path):
    root, url, requests = http_dir
    payload = os.urandom(3000)
    (root / "good.bin").write_bytes(payload)
    (root / "bad.bin").write_bytes(b"corrupted")
    good_md5 = hashlib.md5(payload).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.bin").write_bytes(b"stale")  # wrong checksum: replaced, and kept aside
    paths = download("mnist", out, base_url=url.rstrip("/"), checksums={"good.bin": good_md5})
    assert paths == [out / "good.bin"] and (out / "good.bin").read_bytes() == payload
    stale_md5 = hashlib.md5(b"stale").hexdigest()
    assert (out / f"good.bin.md5-{stale_md5[:8]}").read_bytes() == b"stale"
    with pytest.raises(ChecksumError, match="bad.bin.*expected 0{32}"):
        download("cifar10", out, base_url=url, checksums={"bad.bin": "0" * 32})
    # no partial/bad files left
    assert sorted(f.name for f in out.iterdir()) == ["good.bin", f"good.bin.md5-{stale_md5[:8]}"]
    with pytest.raises(OSError, match="missing.bin"):
        download("cifar10", out, base_url=url, checksums={"missing.bin": "0" * 32})
    with pytest.raises(ValueError, match="downloadable"):
        download("synthetic", out)


def test_download_never_removes_a_file_without_a_verified_replacement(http_dir, tmp_path):
    # Issue 20: a valid file with another checksum (the shared MNIST train images, say) was
    # deleted before a download that then failed offline.
    root, url, _ = http_dir
    out = tmp_path / "data"
    out.mkdir()
    mine = os.urandom(1000)
    (out / "train-images-idx3-ubyte.gz").write_bytes(mine)
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"upstream changed")  # fails the md5
    for served, why in ((url, "verified"), ("http://127.0.0.1:9/", "download")):
        with pytest.raises(OSError, match=r"train-images-idx3-ubyte.gz has md5 .*left as it is"):
            download(
                "mnist", out, base_url=served, timeout=5,
                checksums={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
            )  # fmt: skip
        assert (out / "train-images-idx3-ubyte.gz").read_bytes() == mine, why
        assert [f.name for f in out.iterdir()] == ["train-images-idx3-ubyte.gz"], why


def test_download_defaults_are_canonical():
    from advjax.data.download import RESOURCES

    url, sums = RESOURCES["mnist"]
    assert url == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert sums["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert RESOURCES["cifar10"][1] == {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}
    assert RESOURCES["cifar100"][1] == {
        "cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"
    }
