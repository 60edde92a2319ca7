"""docs/tutorial.py runs start to end (on the tiny GPT-2, with small budgets)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_tutorial_runs(tiny_gpt2, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((REPO / "README.md").read_text())
    out = subprocess.run(
        [sys.executable, str(REPO / "docs/tutorial.py"), "--model", str(tiny_gpt2),
         "--corpus", str(corpus), "--tokens", "3000", "--steps", "100", "--work", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for said in ["feature ", "steering changes the logits", "on the steered stream"]:
        assert said in out.stdout, out.stdout
