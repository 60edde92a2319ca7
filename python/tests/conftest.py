"""Shared fixtures: the CLI binary (for parity with the Rust path), packaged models, and a
reader of safetensors files that needs nothing but NumPy."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import glassbox as gb

REPO = Path(__file__).resolve().parents[2]


def glassbox_bin() -> Path:
    """The `glassbox` binary scripts/test built (GLASSBOX_BIN overrides)."""
    if "GLASSBOX_BIN" in os.environ:
        return Path(os.environ["GLASSBOX_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "glassbox"


def cli(*args: str) -> subprocess.CompletedProcess:
    """Runs the CLI; fails the test with its stderr if it fails."""
    out = subprocess.run([str(glassbox_bin()), *args], capture_output=True, text=True)
    assert out.returncode == 0, f"glassbox {' '.join(args)} failed:\n{out.stderr}"
    return out


def cli_json(*args: str) -> dict:
    return json.loads(cli(*args, "--json").stdout)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (F32, F16, U32: what Glassbox writes)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": "<f4", "F16": "<f2", "U32": "<u4"}[info["dtype"]]
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
    return out


@pytest.fixture(scope="session")
def smollm2() -> gb.Model:
    return gb.Model.load("smollm2")


@pytest.fixture(scope="session")
def minilm() -> gb.Model:
    return gb.Model.load("minilm")


@pytest.fixture(scope="session")
def tiny_gpt2() -> Path:
    return REPO / "crates/glassbox-model/tests/fixtures/tiny-gpt2"


@pytest.fixture(scope="session")
def built(tmp_path_factory, tiny_gpt2) -> Path:
    """A harvest, a small trained dictionary (`dict`) and a catalog (`catalog`) of the tiny
    GPT-2 over the README, made by the CLI."""
    d = tmp_path_factory.mktemp("built")
    corpus = d / "corpus.txt"
    corpus.write_text((REPO / "README.md").read_text())
    model = str(tiny_gpt2)
    cli("harvest", "--model", model, "--hook", "blocks.1.hook_resid_pre", "--corpus", str(corpus),
        "--tokens", "2000", "--context", "32", "--out", str(d / "acts"), "--json")
    cli("train-dict", "--acts", str(d / "acts"), "--out", str(d / "dict"), "--k", "4", "--width", "256",
        "--batch", "256", "--steps", "100", "--json")
    cli("catalog", "build", "--model", model, "--dict", str(d / "dict"), "--corpus", str(corpus),
        "--tokens", "3000", "--context", "32", "--batch", "4", "--catalog", str(d / "catalog"), "--json")
    return d
