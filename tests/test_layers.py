"""Layers that do not loop back (DESIGN.md, "Layers"): train and eval side by side, the experiment
layer above both, launch scripts on top."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> packages it must not import (even indirectly)
FORBIDDEN = {
    "advjax.train": ("advjax.eval", "advjax.experiment"),
    "advjax.eval": ("advjax.train", "advjax.experiment"),
    "advjax.defenses": ("advjax.train", "advjax.eval", "advjax.experiment"),
    "advjax.attacks": ("advjax.defenses", "advjax.train", "advjax.eval", "advjax.experiment"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_the_layers_above_or_beside_it(package):
    code = (
        f"import sys, {package}; "
        f"print(sorted({{m.rsplit('.', m.count('.') - 1)[0] for m in sys.modules "
        f"if m.startswith('advjax.')}}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = proc.stdout
    for other in FORBIDDEN[package]:
        assert f"'{other}'" not in loaded, f"{package} imports {other}: {loaded}"
