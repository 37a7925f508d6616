"""The README's Python runs as written, from a fresh folder (with 1 epoch instead of 5)."""

import re
import subprocess
import sys

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_has_at_most_200_lines():
    assert len(README.splitlines()) <= 200


def test_every_python_block_of_the_readme_runs_as_written(mnist, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        code = block.replace("epochs=5", "epochs=1")
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (block, proc.stderr[-2000:])
