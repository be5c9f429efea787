"""Fetch canonical dataset files with checksum verification (for machines with internet)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

# name -> (default base URL, {file name: md5}).
RESOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"},
    ),
    "svhn": (
        "http://ufldl.stanford.edu/housenumbers/",
        {
            "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        },
    ),
}

_CHUNK = 1 << 20


class ChecksumError(OSError):
    """A downloaded file's md5 does not match the expected one (the download was discarded)."""


def md5sum(path: str | os.PathLike) -> str:
    """Hex md5 of a file, streamed."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, md5: str, timeout: float) -> None:
    """Streams `url` into a temp file beside `target`, checks md5, renames atomically."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if got != md5:
            raise ChecksumError(
                f"Checksum mismatch for {url}: md5 {got}, expected {md5}; the download was "
                "discarded (corrupt transfer or changed upstream file)."
            )
        os.replace(tmp, target)
    except urllib.error.URLError as e:
        raise OSError(
            f"Could not download {url} ({e}). This needs internet access; on an offline machine "
            f"copy the file into {target.parent} instead."
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download(
    name: str,
    data_dir: str | os.PathLike,
    base_url: str | None = None,
    timeout: float = 60.0,
    checksums: dict[str, str] | None = None,
) -> list[Path]:
    """Downloads the canonical files of `name` into `data_dir` and returns their paths.

    Files already present with the right md5 are skipped; others are (re)fetched over
    `base_url` (default: the canonical mirror), verified, and renamed into place atomically.
    `checksums` ({file name: md5}) replaces the default file list, e.g. for a mirror.
    Afterwards point `load_dataset(..., data_dir=data_dir)` or $ADVJAX_DATA_DIR at the folder.
    """
    if name not in RESOURCES:
        raise ValueError(
            f"No downloadable files for {name!r}; downloadable: {', '.join(RESOURCES)}."
        )
    default_url, default_sums = RESOURCES[name]
    sums = dict(default_sums if checksums is None else checksums)
    base = (base_url or default_url).rstrip("/") + "/"
    directory = Path(data_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, md5 in sums.items():
        target = directory / filename
        md5 = md5.lower()
        if not target.exists():
            log.info("Downloading %s%s -> %s", base, filename, target)
            _fetch(base + filename, target, md5, timeout)
        elif (found := md5sum(target)) == md5:
            log.info("%s already present with the right checksum; skipping.", target)
        else:
            _replace_mismatching(base + filename, target, found, md5, timeout)
        paths.append(target)
    return paths


def _replace_mismatching(url: str, target: Path, found: str, md5: str, timeout: float) -> None:
    """A file is there with another checksum: it is kept, under a new name, only once a verified
    replacement is in place; if the download fails it stays where it is, untouched."""
    kept = target.with_name(f"{target.name}.md5-{found[:8]}")
    log.warning(
        "%s has md5 %s, expected %s; downloading a verified copy (yours will be kept as %s).",
        target,
        found,
        md5,
        kept.name,
    )
    staged = target.with_name(f".{target.name}.verified")
    try:
        _fetch(url, staged, md5, timeout)
    except OSError as err:
        raise type(err)(
            f"{target} has md5 {found}, not the expected {md5}, and no verified replacement "
            f"could be downloaded, so it was left as it is. {err} If your copy is right for you, "
            "pass checksums={...} with its md5 (or use the folder as it is with load_dataset)."
        ) from err
    os.replace(target, kept)
    os.replace(staged, target)
    log.warning("%s replaced by the verified download; your previous file is %s.", target, kept)
