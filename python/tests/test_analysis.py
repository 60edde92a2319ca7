"""Analyses from Python: the same reports as the CLI's `--json` on the same prompts, turned
into tables, and the invariants that make them right (DLA's pieces add up to the model's
logit; the lens's last layer is the model's own prediction; patching the whole residual
stream where the prompts differ restores the clean run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import glassbox as gb
from conftest import cli_json

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"


def test_attribution_patching_matches_the_cli(smollm2):
    df = gb.analysis.patch(smollm2, CLEAN, CORRUPT, target=" Paris", minus=" Rome",
                           attribution=True)
    report = cli_json("patch", "--model", "smollm2", "--clean", CLEAN, "--corrupt", CORRUPT,
                      "--metric", r"logit-diff \sParis \sRome", "--attribution")["report"]
    assert df.attrs["method"] == "attribution" and df.attrs["forward_passes"] == 3
    assert df.attrs["clean_metric"] == pytest.approx(report["clean_metric"], abs=1e-5)
    expected = [e for s in report["sweeps"] for row in s["effects"] for e in row]
    assert len(df) == len(expected) == 30 * (3 * len(report["tokens"]) + 9)
    np.testing.assert_allclose(df["effect"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    heads = df[df.component == "head_z"]
    assert heads["position"].isna().all() and heads["head"].between(0, 8).all()
    assert set(df.component) == {"resid_pre", "attn_out", "mlp_out", "head_z"}


def test_activation_patching_restores_the_clean_run_where_the_prompts_differ(tiny_gpt2):
    model = gb.Model.load(tiny_gpt2)
    clean, corrupt = [84, 269, 266, 270], [84, 269, 100, 270]  # token ids: position 2 differs
    df = gb.analysis.patch(model, clean, corrupt, target="a", minus="b")
    assert df.attrs["method"] == "activation"
    layer0 = df[(df.component == "resid_pre") & (df.layer == 0)].set_index("position")
    # Layer 0's residual stream at the changed token is everything the runs differ in.
    assert layer0.loc[2, "effect"] == pytest.approx(1.0, abs=1e-4)
    assert layer0.loc[2, "metric"] == pytest.approx(df.attrs["clean_metric"], abs=1e-4)
    assert (layer0.drop(index=2)["effect"].abs() < 1e-4).all()
    # On text, the CLI's report on the same prompts.
    df = gb.analysis.patch(model, "the cat", "the hat", target="a", minus="b")
    report = cli_json("patch", "--model", str(tiny_gpt2), "--clean", "the cat", "--corrupt",
                      "the hat", "--metric", "logit-diff a b")["report"]
    expected = [e for s in report["sweeps"] for row in s["effects"] for e in row]
    np.testing.assert_allclose(df["effect"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_logit_lens_ends_at_the_models_prediction(smollm2):
    df = gb.analysis.logit_lens(smollm2, CLEAN, k=3, target=" Paris")
    logits, _ = smollm2.run_with_cache(CLEAN, names_filter=[])
    final = df[df.layer == "final_post"].sort_values("position")
    probs = np.exp(logits[0] - logits[0].max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert list(final["top"]) == [smollm2.to_string([int(i)]) for i in logits[0].argmax(-1)]
    np.testing.assert_allclose(final["prob"], probs.max(-1), atol=1e-4)
    paris = smollm2.to_tokens(" Paris")[0, -1]
    last = final.iloc[-1]
    assert last["target_prob"] == pytest.approx(probs[-1, paris], abs=1e-4)
    assert last["target_rank"] == 1 + (logits[0, -1] > logits[0, -1, paris]).sum()
    assert len(df) == 31 * len(df.attrs["tokens"]) and len(last["top_k"]) == 3
    cli = cli_json("lens", "smollm2", CLEAN, "--top", "3", "--target", r"\sParis")["lens"]
    assert [row[-1][0]["token"] for row in cli["top"]] == list(
        df[df.position == len(df.attrs["tokens"]) - 1]["top"])
    assert [r[-1] for r in cli["target"]["rank"]] == list(
        df[df.position == len(df.attrs["tokens"]) - 1]["target_rank"])


def test_dla_pieces_add_up_to_the_models_logit(smollm2):
    df = gb.analysis.dla(smollm2, CLEAN, target=" Paris", minus=" Rome")
    logits, _ = smollm2.run_with_cache(CLEAN, names_filter=[])
    paris, rome = smollm2.to_tokens(" Paris")[0, -1], smollm2.to_tokens(" Rome")[0, -1]
    assert df.attrs["logit"] == pytest.approx(logits[0, -1, paris] - logits[0, -1, rome], abs=2e-3)
    assert df["value"].sum() + df.attrs["bias"] == pytest.approx(df.attrs["logit"], abs=2e-3)
    assert df["head"].notna().sum() == 30 * 9 and (df["label"] == "embed").sum() == 1
    cli = cli_json("dla", "smollm2", CLEAN, "--target", r"\sParis", "--minus", r"\sRome")["dla"]
    np.testing.assert_allclose(df["value"], [p["value"] for p in cli["pieces"]], atol=1e-5)
    # Default target: the top prediction; a negative position counts from the end.
    top = gb.analysis.dla(smollm2, CLEAN, position=-1)
    assert top.attrs["position"] == len(smollm2.to_tokens(CLEAN)[0]) - 1
    assert top.attrs["logit"] == pytest.approx(logits[0, -1].max(), abs=2e-3)


def test_attribution_graph_matches_the_cli(tiny_gpt2, built, tmp_path):
    model = gb.Model.load(tiny_gpt2)
    sae = gb.Sae.load(built / "dict")
    text = "Interpretability research asks"
    graph = gb.analysis.attribution_graph(model, text, [sae], target="a", nodes_per_layer=6)
    nodes, edges = graph["nodes"], graph["edges"]
    assert isinstance(nodes, pd.DataFrame) and isinstance(edges, pd.DataFrame)
    assert graph["dictionaries"] == [sae.hook_name]
    assert (nodes.kind == "target").sum() == 1 and len(graph["paths"]) > 0
    assert edges["source"].between(0, len(nodes) - 1).all()
    out = tmp_path / "g.json"
    cli_json("graph", str(tiny_gpt2), text, "--dict", str(built / "dict"), "--target", "a",
             "--nodes", "6", "--out", str(out))
    import json
    expected = json.loads(out.read_text())
    assert graph["target_value"] == pytest.approx(expected["target_value"], abs=1e-5)
    assert list(nodes.label) == [n["label"] for n in expected["nodes"]]
    np.testing.assert_allclose(edges["effect"], [e["effect"] for e in expected["edges"]],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: gb.analysis.patch(m, "the cat", "the big hat", target="a", minus="b"),
     gb.GlassboxError, "same number of tokens"),
    (lambda m: gb.analysis.patch(m, "the cat", "the hat", target="a"), gb.GlassboxError, "minus="),
    (lambda m: gb.analysis.dla(m, "the cat", target="a cat"), gb.GlassboxError, "single token"),
    (lambda m: gb.analysis.dla(m, "the cat", position=-9), gb.GlassboxError, "before the first"),
    (lambda m: gb.analysis.dla(m, 3.5), TypeError, "string or a list of token ids"),
    (lambda m: gb.analysis.logit_lens(m, [1, 10 ** 9]), gb.GlassboxError, "outside the vocabulary"),
    (lambda m: gb.analysis.attribution_graph(m, "the cat", []), gb.GlassboxError, "target="),
])
def test_bad_analysis_input_is_a_clear_error(tiny_gpt2, call, error, message):
    with pytest.raises(error, match=message):
        call(gb.Model.load(tiny_gpt2))


def test_encoders_are_refused_where_a_logit_is_needed(minilm):
    with pytest.raises(gb.GlassboxError, match="encoder"):
        gb.analysis.logit_lens(minilm, "a cat")
    df = gb.analysis.patch(minilm, "The cat sat on the mat.", "The dog sat on the mat.")
    layer0 = df[(df.component == "resid_pre") & (df.layer == 0)]
    assert layer0.loc[layer0.token == " cat", "effect"].item() == pytest.approx(1.0, abs=1e-3)
