"""Dictionaries from Python: SAELens's files encode as SAELens does, and round-trip."""

from __future__ import annotations

import numpy as np
import pytest

import glassbox as gb
from conftest import REPO, read_safetensors

FIXTURES = REPO / "crates/glassbox-dictionary/tests/fixtures/saelens"


@pytest.mark.parametrize("name", ["sl_standard", "sl_topk", "sl_jumprelu", "gb_topk"])
def test_encodes_like_saelens(name):
    expected = read_safetensors(FIXTURES / "expected.safetensors")
    sae = gb.Sae.load(FIXTURES / name)
    codes = sae.encode(expected["probe"])
    assert codes.shape == expected[name].shape == (32, sae.d_sae)
    np.testing.assert_allclose(codes, expected[name], rtol=1e-4, atol=1e-4)
    assert (codes > 0).any()


def test_decodes_like_saelens():
    expected = read_safetensors(FIXTURES / "expected.safetensors")
    sae = gb.Sae.load(FIXTURES / "gb_topk")
    xhat = sae.decode(sae.encode(expected["probe"]))
    np.testing.assert_allclose(xhat, expected["gb_topk.decode"], rtol=1e-3, atol=1e-3)
    # decode is f · W_dec + b_dec with SAELens's parameter names and layouts.
    f = sae.encode(expected["probe"][:3])
    np.testing.assert_allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec, rtol=1e-4, atol=1e-4)
    assert sae.W_enc.shape == (sae.d_in, sae.d_sae) and sae.W_dec.shape == (sae.d_sae, sae.d_in)


def test_round_trips_through_python(tmp_path):
    probe = read_safetensors(FIXTURES / "expected.safetensors")["probe"]
    for name in ["sl_standard", "sl_topk", "sl_jumprelu"]:
        sae = gb.Sae.load(FIXTURES / name)
        sae.save(tmp_path / name)
        again = gb.Sae.load(tmp_path / name)
        assert (again.architecture, again.hook_name, again.d_sae) == (sae.architecture, sae.hook_name, sae.d_sae)
        assert np.array_equal(again.W_enc, sae.W_enc) and np.array_equal(again.W_dec, sae.W_dec)
        assert np.array_equal(again.encode(probe), sae.encode(probe))


def test_bad_input(tmp_path):
    sae = gb.Sae.load(FIXTURES / "sl_topk")
    with pytest.raises(gb.GlassboxError, match=rf"expected \[n, {sae.d_in}\]"):
        sae.encode(np.zeros((2, sae.d_in + 1), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        sae.encode(np.zeros((2, sae.d_in), np.int32))
    with pytest.raises(gb.GlassboxError, match="cfg.json"):
        gb.Sae.load(tmp_path)
    assert sae.encode(np.zeros(sae.d_in)).shape == (1, sae.d_sae)


def test_trains_as_the_cli_does(built, tmp_path):
    """`Sae.train` on the harvested store is `glassbox train-dict` with the same settings: the
    same dictionary, bit for bit (the conftest's `dict` was trained by the CLI)."""
    lines = []
    sae = gb.Sae.train(built / "acts", tmp_path / "py", k=4, width=256, batch=256, steps=100,
                       progress=lambda step, steps, stats: lines.append((step, steps, stats["fve"])))
    cli_sae = gb.Sae.load(built / "dict")
    assert np.array_equal(sae.W_dec, cli_sae.W_dec) and np.array_equal(sae.W_enc, cli_sae.W_enc)
    assert np.array_equal(sae.b_dec, cli_sae.b_dec)
    assert [s for s, _, _ in lines] == list(range(1, 101)) and lines[0][1] == 100
    assert lines[-1][2] > lines[0][2], "FVE rises"
    assert sae.architecture == "topk" and sae.hook_name == "blocks.1.hook_resid_pre"


def test_a_sweep_stopped_by_its_callback_resumes(built, tmp_path):
    stop_at = 30
    with pytest.raises(KeyboardInterrupt, match="stopped at step 30 of 60"):
        gb.Sae.train(built / "acts", tmp_path, k=[2, 4], width=128, batch=256, steps=60,
                     checkpoint_every=25, progress=lambda step, steps, stats: step == stop_at)
    assert (tmp_path / "k2" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "k2" / "cfg.json").exists()
    resumed = gb.Sae.train(built / "acts", tmp_path, k=[2, 4], width=128, batch=256, steps=60,
                           checkpoint_every=25, progress=False)
    straight = gb.Sae.train(built / "acts", tmp_path / "straight", k=[2, 4], width=128, batch=256,
                            steps=60, checkpoint_every=25, progress=False)
    assert [s.d_sae for s in resumed] == [128, 128]
    for a, b in zip(resumed, straight):
        assert np.array_equal(a.W_dec, b.W_dec)


def test_trains_on_an_array(tmp_path, capsys):
    """Rows with a planted sparse structure, straight from NumPy: the default progress bar
    prints plain lines (no tqdm here), and the dictionary reconstructs held-out rows."""
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(32, 24)).astype(np.float32)
    def rows(n):
        codes = np.zeros((n, 32), np.float32)
        for r in codes:
            r[rng.choice(32, 3, replace=False)] = rng.uniform(0.5, 2, 3)
        return codes @ dirs
    sae = gb.Sae.train(rows(4096), tmp_path, k=3, width=64, batch=128, steps=300, lr=1e-2,
                       model="planted", hook="x")
    held_out = rows(256)
    err = ((sae.decode(sae.encode(held_out)) - held_out) ** 2).sum()
    fve = 1 - err / ((held_out - held_out.mean(0)) ** 2).sum()
    assert fve > 0.8, fve
    assert sae.model_name == "planted" and sae.hook_name == "x"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("train (steps): 300/300 · FVE"), lines[-3:]
    assert 10 <= len(lines) <= 40, len(lines)


@pytest.mark.parametrize("call, error, message", [
    (lambda p: gb.Sae.train(p / "nowhere", p / "out"), gb.GlassboxError, "manifest"),
    (lambda p: gb.Sae.train(np.zeros((10, 4, 2)), p), gb.GlassboxError, r"\[n, d_in\]"),
    (lambda p: gb.Sae.train(np.zeros((10, 4)), p, batch=64), gb.GlassboxError, "fewer than one batch"),
    (lambda p: gb.Sae.train(np.zeros((100, 4)), p, arch="l2"), ValueError, "topk, batchtopk"),
    (lambda p: gb.Sae.train(np.zeros((100, 4)), p, k=[]), gb.GlassboxError, "at least one k"),
    (lambda p: gb.Sae.train(np.zeros((100, 4)), p, targets=np.zeros((99, 4))), gb.GlassboxError, "one target row per row"),
    (lambda p: gb.Sae.train(np.zeros((100, 4), dtype=np.int64), p), TypeError, "int64"),
    (lambda p: gb.Sae.train(np.ones((100, 4)), p, batch=32, steps=2, progress=lambda *a: 1 / 0), ZeroDivisionError, "division"),
])
def test_bad_training_input_is_a_clear_error(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tmp_path)
