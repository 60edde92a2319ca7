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
