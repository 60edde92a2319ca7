"""Catalogs from Python: the tables hold what the CLI shows."""

from __future__ import annotations

import pandas as pd
import pytest

import glassbox as gb
from conftest import cli_json


def test_tables_and_cards_match_the_cli(built):
    cat = gb.Catalog.open(built / "catalog")
    assert cat.meta["hook"] == "blocks.1.hook_resid_pre" and cat.meta["d_sae"] == 256
    table = cat.features()
    assert isinstance(table, pd.DataFrame) and len(table) == 256
    assert list(table.columns) == ["count", "density", "max", "label", "label_score", "flags"]
    top = int(table["count"].idxmax())
    card = cat.feature(top)
    shown = cli_json("catalog", "show", str(top), "--catalog", str(built / "catalog"))
    assert card["count"] == table.loc[top, "count"] > 0
    assert card["label"] == shown["feature"]["label"] == table.loc[top, "label"]
    assert card["density"] == pytest.approx(shown["density"])
    assert card["examples"] and card["max"] == pytest.approx(table.loc[top, "max"])
    word = card["top_tokens"][0][0].strip() or "the"
    hits = cat.search(token=word, limit=5)
    assert top in hits.index or len(hits) == 5
    assert (hits["score"].diff().dropna() <= 0).all()


def test_full_text_search_matches_the_cli(built):
    cat = gb.Catalog.open(built / "catalog")
    label = next(l for l in cat.features()["label"] if l.strip())
    query = label.split(" · ")[0]
    ours = cat.search(query, limit=10)
    theirs = cli_json("catalog", "search", query, "--limit", "10", "--catalog", str(built / "catalog"))
    assert list(ours.index) == [r["id"] for r in theirs["results"]]
    assert len(ours) > 0


def test_a_dictionary_from_the_cli_reads_in_python(built, tiny_gpt2):
    sae = gb.Sae.load(built / "dict")
    model = gb.Model.load(str(tiny_gpt2))
    _, cache = model.run_with_cache("Glassbox reads the model", names_filter=sae.hook_name)
    acts = cache[sae.hook_name][0]
    codes = sae.encode(acts)
    assert codes.shape == (acts.shape[0], 256)
    assert ((codes > 0).sum(axis=1) <= 4).all()


def test_bad_input(built, tmp_path):
    with pytest.raises(gb.GlassboxError, match="no catalog"):
        gb.Catalog.open(tmp_path)
    cat = gb.Catalog.open(built / "catalog")
    with pytest.raises(KeyError, match="99999"):
        cat.feature(99999)
    with pytest.raises(ValueError, match="exactly one"):
        cat.search()
