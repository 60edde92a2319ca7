#!/usr/bin/env python3
"""SAELens interop fixtures for crates/glassbox-dictionary/tests/saelens_interop.rs (not run by CI).

Both directions, checked on the same probe activations:
  1. SAELens → Glassbox: SAELens builds and saves standard, topk and jumprelu SAEs (sl_*/);
     their SAELens encodings of the probe are stored, and the Rust test loads the saved files and
     must encode the probe the same way.
  2. Glassbox → SAELens: `glassbox train-dict` trains a small TopK dictionary on tiny-GPT-2
     activations (gb_topk/); SAELens loads it with `SAE.load_from_disk` and its encodings of the
     probe are stored; the Rust test must agree.

    python3 -m venv .venv && .venv/bin/pip install sae-lens
    .venv/bin/python scripts/reference/saelens_interop.py      # needs cargo on PATH
"""
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/glassbox-dictionary/tests/fixtures/saelens"
D_IN, D_SAE, N = 64, 256, 32


def glassbox(*args):
    subprocess.run(["cargo", "run", "--release", "-q", "-p", "glassbox-cli", "--", *args], cwd=ROOT, check=True)


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    probe = torch.randn(N, D_IN) * 3.0
    expected = {"probe": probe}

    configs = {
        "sl_standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "sl_topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8)),
        "sl_jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
    }
    with torch.no_grad():
        for name, sae in configs.items():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
            if hasattr(sae, "threshold"):
                sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
            path = OUT / name
            shutil.rmtree(path, ignore_errors=True)
            sae.save_model(path)
            reloaded = SAE.load_from_disk(path)
            expected[name] = reloaded.encode(probe)
            print(name, "L0", float((expected[name] > 0).float().sum(-1).mean()))

        # Glassbox → SAELens: a dictionary trained by glassbox on real (tiny-GPT-2) activations.
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "corpus.txt").write_text((ROOT / "README.md").read_text())
            tiny = ROOT / "crates/glassbox-model/tests/fixtures/tiny-gpt2"
            glassbox("harvest", "--model", str(tiny), "--hook", "blocks.1.hook_resid_pre", "--corpus", str(tmp / "corpus.txt"),
                     "--tokens", "3000", "--context", "32", "--batch", "8", "--out", str(tmp / "acts"), "--json")
            glassbox("train-dict", "--acts", str(tmp / "acts"), "--out", str(tmp / "dict"), "--k", "8", "--width", str(D_SAE),
                     "--batch", "256", "--steps", "200", "--lr", "0.002", "--json")
            path = OUT / "gb_topk"
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(tmp / "dict", path, ignore=shutil.ignore_patterns("checkpoint.safetensors", "history.json"))
        sae = SAE.load_from_disk(OUT / "gb_topk")
        expected["gb_topk"] = sae.encode(probe)
        expected["gb_topk.decode"] = sae.decode(expected["gb_topk"])
        print("gb_topk loaded by SAELens as", type(sae).__name__, "L0", float((expected["gb_topk"] > 0).float().sum(-1).mean()))
    save_file({k: v.contiguous() for k, v in expected.items()}, OUT / "expected.safetensors")
    (OUT / "README.md").write_text("Written by scripts/reference/saelens_interop.py (SAELens "
                                   + __import__("sae_lens").__version__ + "); see crates/glassbox-dictionary/tests/saelens_interop.rs.\n")


if __name__ == "__main__":
    main()
