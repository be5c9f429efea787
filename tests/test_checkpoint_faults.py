"""Checkpoint faults (issue 20): an unwritable checkpoint directory fails at the start in one
line and the process exits; a corrupt checkpoint is moved aside (never deleted) and training
resumes from the newest intact one, bit for bit; a corrupt best checkpoint is rewritten by a
rerun of training; evaluation reads a read-only workdir and writes nothing there."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np
import pytest

from advjax.experiment import restore_variables, train_and_evaluate
from advjax.train import Checkpointer, CheckpointError
from tests.train_configs import tiny_config

REPO = Path(__file__).resolve().parents[1]
SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, final state)`` of one uninterrupted tiny run: checkpoints/4, checkpoints/6
    and best/6."""
    config = tiny_config("natural", epochs=1)
    workdir = tmp_path_factory.mktemp("trained") / "wd"
    final = train_and_evaluate(config, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]
    assert os.listdir(workdir / "best") == ["6"]
    return workdir, final


def _copy(trained, tmp_path) -> Path:
    workdir = tmp_path / "wd"
    shutil.copytree(trained[0], workdir)
    return workdir


def _garbage(step_dir: Path, data_only: bool = False) -> None:
    """Overwrites a checkpoint's files (all of them, or only its array data) with garbage."""
    for path in step_dir.rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            if not data_only or path.parent.name == "d":
                path.write_bytes(b"garbage")


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_short(err: BaseException) -> None:
    assert len(str(err).splitlines()) <= 3 and len(str(err)) < 600, str(err)


@contextmanager
def _immutable(*paths: Path, recursive: bool = False):
    """``chattr +i`` (root ignores permission bits, not this); skips where it is unavailable."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    flags = ["-R"] if recursive else []
    done = []
    try:
        for path in paths:
            proc = subprocess.run(["chattr", *flags, "+i", str(path)], capture_output=True)
            done.append(path)
            if proc.returncode != 0:
                pytest.skip(f"chattr +i failed: {proc.stderr.decode().strip()}")
        probe = paths[0] / "probe"
        try:
            probe.mkdir()
        except OSError:
            pass
        else:
            probe.rmdir()
            pytest.skip("chattr +i does not stop writes here")
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", *flags, "-i", str(path)], capture_output=True)


def _new_non_daemon_threads(before: set) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if not t.daemon and t not in before and t.is_alive()]


def test_unwritable_checkpoints_fail_at_the_start_and_leave_no_threads(tmp_path):
    workdir = tmp_path / "wd"
    (workdir / "checkpoints").mkdir(parents=True)
    before = set(threading.enumerate())
    with _immutable(workdir / "checkpoints"):
        with pytest.raises(CheckpointError) as err:
            train_and_evaluate(tiny_config("natural", epochs=1), str(workdir))
        assert f"{workdir / 'checkpoints'} is not writable" in str(err.value)
        assert "Operation not permitted" in str(err.value) and "--workdir" in str(err.value)
        _assert_short(err.value)
        assert not (workdir / "metrics.jsonl").exists()  # no training step ran
        # A save that fails (here: straight into the immutable directory) is one short error in
        # the calling thread, and no orbax thread waits on after it.
        ckpt = Checkpointer(str(workdir), create=True)
        with pytest.raises(CheckpointError, match=re.escape(f"{workdir}/checkpoints/3")) as err:
            ckpt.save(3, {"w": np.zeros(3, np.float32)})
        _assert_short(err.value)
        ckpt.close()
    assert _new_non_daemon_threads(before) == []


def test_launch_train_on_an_unwritable_workdir_exits_and_names_it(tmp_path):
    workdir = tmp_path / "wd"
    (workdir / "checkpoints").mkdir(parents=True)
    overrides = [
        "--config.data.name=synthetic",
        "--config.data.source=synthetic",
        "--config.data.num_validation=64",
        "--config.model.name=mnist_cnn4",
        "--config.train.epochs=1",
        "--config.train.batch_size=32",
        "--config.validation.num_examples=64",
    ]
    with _immutable(workdir / "checkpoints"):
        start = time.time()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "launch.train",
                f"--config={REPO}/configs/mnist.py:natural",
                f"--workdir={workdir}",
                *overrides,
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,  # it used to hang forever on orbax's threads
        )
    assert proc.returncode != 0 and time.time() - start < 60
    unwrapped = "".join(proc.stderr.split())  # the console may wrap long lines
    assert str(workdir / "checkpoints") in unwrapped, proc.stderr[-2000:]


def test_corrupt_latest_and_best_are_moved_aside_and_training_resumes_exactly(
    trained, tmp_path, caplog
):
    workdir = _copy(trained, tmp_path)
    _garbage(workdir / "checkpoints" / "6")
    _garbage(workdir / "best" / "6", data_only=True)
    with caplog.at_level(logging.WARNING):
        resumed = train_and_evaluate(tiny_config("natural", epochs=1), str(workdir))
    _assert_trees_equal(trained[1], resumed)  # resumed from step 4: the same as uninterrupted
    assert (workdir / "corrupt" / "checkpoints_6").is_dir()  # moved aside, not deleted
    assert (workdir / "corrupt" / "best_6").is_dir()
    assert f"checkpoint {workdir}/checkpoints/6 is corrupt (" in caplog.text
    assert "resuming from step 4" in caplog.text
    assert f"best checkpoint {workdir}/best/6 is corrupt (" in caplog.text
    assert "--checkpoint=best uses the latest checkpoint until the next validation" in caplog.text
    # Step 6 was saved again (latest and, after its validation, best), and reads back.
    config = tiny_config("natural", epochs=1)
    _, variables, info = restore_variables(config, str(workdir), "best", SHAPE)
    assert info == {"kind": "best", "step": 6}
    _assert_trees_equal(trained[1].variables, variables)


def test_corrupt_best_is_refused_by_evaluation_and_rewritten_by_training(trained, tmp_path):
    config = tiny_config("natural", epochs=1)
    workdir = _copy(trained, tmp_path)
    original_metrics = Checkpointer(str(workdir)).best.metrics(6)
    for data_only in (True, False):  # unreadable arrays; everything unreadable (metrics too)
        _garbage(workdir / "best" / "6", data_only=data_only)
        with pytest.raises(CheckpointError, match="best") as err:
            restore_variables(config, str(workdir), "best", SHAPE)
        assert "launch.train" in str(err.value) and "--checkpoint=latest" in str(err.value)
        _assert_short(err.value)
    _, variables, info = restore_variables(config, str(workdir), "latest", SHAPE)
    assert info == {"kind": "latest", "step": 6}

    final = train_and_evaluate(config, str(workdir))  # nothing to train; repairs best/6
    _assert_trees_equal(trained[1], final)
    assert (workdir / "corrupt" / "best_6").is_dir()
    ckpt = Checkpointer(str(workdir))
    assert ckpt.best_step() == 6 and ckpt.best.metrics(6) == original_metrics
    ckpt.close()
    _, best_variables, info = restore_variables(config, str(workdir), "best", SHAPE)
    assert info == {"kind": "best", "step": 6}
    _assert_trees_equal(variables, best_variables)


def test_evaluation_reads_a_read_only_workdir_and_skips_a_corrupt_latest(trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    shutil.rmtree(workdir / "best")  # as if no validation ran: `best` falls back to the latest
    _garbage(workdir / "checkpoints" / "6")
    before = sorted(str(p) for p in workdir.rglob("*"))
    with _immutable(workdir, recursive=True), caplog.at_level(logging.WARNING):
        _, _, info = restore_variables(
            tiny_config("natural", epochs=1), str(workdir), "best", SHAPE
        )
    assert info == {"kind": "latest", "step": 4}
    assert f"checkpoint {workdir}/checkpoints/6 is corrupt (" in caplog.text
    assert "using step 4" in caplog.text
    assert sorted(str(p) for p in workdir.rglob("*")) == before  # nothing created or moved
    with pytest.raises(CheckpointError, match=r"checkpoints/6 is corrupt.*--checkpoint") as err:
        restore_variables(tiny_config("natural", epochs=1), str(workdir), "6", SHAPE)
    _assert_short(err.value)


def test_mismatched_and_all_corrupt_checkpoints_are_named(trained, tmp_path):
    config = tiny_config("natural", epochs=1)
    workdir = str(_copy(trained, tmp_path))
    other = tiny_config("natural", epochs=1)
    other.model.name = "mnist_small"
    with pytest.raises(CheckpointError, match=r"checkpoints/6.*different model") as err:
        train_and_evaluate(other, workdir)
    _assert_short(err.value)
    # Every checkpoint corrupt: nothing to resume from (one line, nothing moved).
    for step in ("4", "6"):
        _garbage(Path(workdir, "checkpoints", step), data_only=True)
    with pytest.raises(CheckpointError, match=r"checkpoints/6 is corrupt.*no intact") as err:
        train_and_evaluate(config, workdir)
    assert len(str(err.value).splitlines()) == 1
    assert sorted(os.listdir(Path(workdir, "checkpoints"))) == ["4", "6"]
