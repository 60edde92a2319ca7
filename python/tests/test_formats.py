"""docs/formats.md is true: the activation store and the catalog's Parquet tables read with
NumPy, pandas and DuckDB exactly as documented, and hold what Glassbox computed."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd

import glassbox as gb
from conftest import cli_json, read_safetensors


def test_the_activation_store_reads_as_documented(built, tiny_gpt2):
    store = built / "acts"
    m = json.loads((store / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["dtype"] == "f16" and m["complete"]
    shards = [read_safetensors(store / s["file"]) for s in m["shards"]]
    acts = np.concatenate([s["activations"] for s in shards])
    ids = np.concatenate([s["token_ids"] for s in shards])
    assert acts.shape == (m["tokens"], m["d"]) and ids.shape == (m["tokens"],)
    assert [s["rows"] for s in m["shards"]] == [len(s["token_ids"]) for s in shards]
    # Row r is token r mod content_len of context r div content_len: the first context's rows
    # are the model's activations on those tokens (GPT-2 adds no special tokens).
    model = gb.Model.load(str(tiny_gpt2))
    content = m["context_len"]
    _, cache = model.run_with_cache([int(i) for i in ids[:content]], names_filter=m["hook"])
    np.testing.assert_allclose(acts[:content], cache[m["hook"]][0], rtol=1e-2, atol=1e-2)
    second = [int(i) for i in ids[content : 2 * content]]
    _, cache = model.run_with_cache(second, names_filter=m["hook"])
    np.testing.assert_allclose(acts[content : 2 * content], cache[m["hook"]][0], rtol=1e-2, atol=1e-2)


def test_the_catalog_exports_as_parquet(built, tmp_path):
    out = tmp_path / "tables"
    report = cli_json("catalog", "export", "--parquet", str(out), "--catalog", str(built / "catalog"))
    cat = gb.Catalog.open(built / "catalog")
    features = pd.read_parquet(out / "features.parquet")
    assert len(features) == cat.meta["d_sae"] == dict(report["tables"])["features.parquet"]
    ours = cat.features()
    joined = features.set_index("feature").join(ours, suffixes=("", "_py"))
    assert (joined["count"] == joined["count_py"]).all()
    assert (joined["label"] == joined["label_py"]).all()
    np.testing.assert_allclose(joined["density"], joined["density_py"])
    examples = pd.read_parquet(out / "examples.parquet")
    top = int(ours["count"].idxmax())
    card = cat.feature(top)
    mine = examples[examples["feature"] == top]
    assert len(mine) == len(card["examples"])
    assert sorted(mine["activation"]) == sorted(np.float32(e["activation"]) for e in card["examples"])
    vocab = pd.read_parquet(out / "vocab.parquet")
    promoted = vocab[(vocab["feature"] == top) & (vocab["effect"] == "promoted")].sort_values("rank")
    assert list(promoted["token"]) == [t for t, _ in card["promoted"]]
    # A second, independent reader: DuckDB's own Parquet scanner, joining two tables.
    con = duckdb.connect()
    n, total = con.execute(
        f"SELECT count(*), sum(f.count) FROM '{out}/features.parquet' f "
        f"JOIN (SELECT DISTINCT feature FROM '{out}/examples.parquet') e USING (feature)"
    ).fetchone()
    fired = ours[ours["count"] > 0]
    assert n == len(fired[fired.index.isin(examples["feature"])]) and total == fired["count"].sum()
    assert json.loads((out / "meta.json").read_text())["hook"] == cat.meta["hook"]
