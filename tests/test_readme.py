"""The README's tour runs as written (its Python blocks, in order, in one namespace)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_commands_and_tour(tmp_path, monkeypatch):
    text = README.read_text()
    assert "python -m launch.train --config=configs/mnist.py:fast_at" in text
    assert "python -m pytest -q" in text
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    code = "\n".join(blocks).replace("/tmp/advjax_tour", str(tmp_path / "tour"))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    report = namespace["report"]
    assert report["num_examples"] == 256
    assert 0.0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1.0
    assert namespace["per_member"].shape == (3, 8, 28, 28, 1)


if __name__ == "__main__":
    pytest.main([__file__])
