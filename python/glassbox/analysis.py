"""Causal and attribution analyses as pandas tables: activation and attribution patching, the
logit lens, direct logit attribution and feature attribution graphs.

Each function runs the Rust library's analysis (the one ``glassbox patch``, ``lens``, ``dla``
and ``graph`` run, on the same tokens) and returns its report as a DataFrame, with the
report's scalars in ``df.attrs``. Targets are single tokens written as they appear in the
text, leading space included (``" Paris"``).

>>> import glassbox as gb
>>> model = gb.Model.load("smollm2")                                      # doctest: +SKIP
>>> gb.analysis.patch(model, "The Eiffel Tower is in", "The Colosseum is in",
...                   target=" Paris", minus=" Rome").nlargest(3, "effect")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from os import PathLike
from typing import Any, Sequence, Union

import pandas as pd

from . import _native

Text = Union[str, Sequence[int]]


def patch(
    model: _native.Model,
    clean: Text,
    corrupt: Text,
    *,
    target: str | None = None,
    minus: str | None = None,
    reverse: bool = False,
    attribution: bool = False,
) -> pd.DataFrame:
    """Patches every component (``resid_pre``, ``attn_out``, ``mlp_out`` per position; ``head
    z`` per head) of every layer from one run into the other and measures the metric: the
    logit difference ``target − minus`` at the last position (decoders), or without them the
    cosine of the pooled embedding with the clean run's.

    ``clean`` and ``corrupt`` must have the same number of tokens. By default clean
    activations go into the corrupted run (1 = the patch restores the clean metric);
    ``reverse=True`` patches the other way. ``attribution=True`` estimates every effect from one
    backward pass (attribution patching) instead of one patched run per component.

    One row per patch: ``component``, ``layer``, ``position`` or ``head``, ``token``, ``effect``
    (normalised) and ``metric`` (the patched run's, or its estimate). ``df.attrs`` holds the
    clean and corrupted metrics, the method, the direction and the forward passes run.
    """
    report = json.loads(
        _native.patch(model, clean, corrupt, target=target, minus=minus, reverse=reverse,
                      attribution=attribution)
    )
    rows = []
    for sweep in report["sweeps"]:
        per_head = sweep["component"] == "head_z"
        for layer, (effects, metrics) in enumerate(zip(sweep["effects"], sweep["metrics"])):
            for i, (effect, metric) in enumerate(zip(effects, metrics)):
                rows.append({
                    "component": sweep["component"],
                    "layer": layer,
                    "position": None if per_head else i,
                    "head": i if per_head else None,
                    "token": None if per_head else report["tokens"][i],
                    "effect": effect,
                    "metric": metric,
                })
    df = pd.DataFrame(rows, columns=["component", "layer", "position", "head", "token", "effect",
                                     "metric"])
    df = df.astype({"position": "Int64", "head": "Int64"})
    df.attrs = {k: report[k] for k in
                ("method", "direction", "clean_metric", "corrupt_metric", "forward_passes",
                 "tokens")}
    return df


def logit_lens(model: _native.Model, text: Text, *, k: int = 3,
               target: str | None = None) -> pd.DataFrame:
    """What the model would predict if it stopped after each layer (the final norm and the
    unembedding applied to each residual stream, TransformerLens's ``accumulated_resid``).

    One row per layer and position: ``layer`` (``"3_pre"`` is the residual stream entering
    block 3; ``"final_post"`` the last one), ``position``, ``token``, the top prediction
    ``top`` and its ``prob``, the top ``k`` as lists; with ``target``, its ``target_rank`` (1 =
    top) and ``target_prob``.
    """
    table = json.loads(_native.logit_lens_table(model, text, k=k, target=target))
    trace = table.get("target")
    rows = []
    for li, (label, per_position) in enumerate(zip(table["labels"], table["top"])):
        for pos, predictions in enumerate(per_position):
            row = {
                "layer": label,
                "position": pos,
                "token": table["tokens"][pos],
                "top": predictions[0]["token"],
                "prob": predictions[0]["prob"],
                "top_k": [p["token"] for p in predictions],
                "top_k_probs": [p["prob"] for p in predictions],
            }
            if trace is not None:
                row["target_rank"] = trace["rank"][li][pos]
                row["target_prob"] = trace["prob"][li][pos]
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs = {"tokens": table["tokens"], "layers": table["labels"]}
    if trace is not None:
        df.attrs["target"] = trace["token"]
    return df


def dla(model: _native.Model, text: Text, *, target: str | None = None,
        minus: str | None = None, position: int | None = None) -> pd.DataFrame:
    """Direct logit attribution: how much each head, MLP, and the embeddings write the target
    logit (default: the top prediction), or ``target − minus``, straight into the final
    residual stream at ``position`` (default: the last; negative counts from the end).

    One row per piece: ``label``, ``layer``, ``head``, ``value``. The pieces plus
    ``df.attrs["bias"]`` add up to ``df.attrs["logit"]``, the model's own value (the final
    norm's scale is the real run's, as in TransformerLens's cached ``ln_final.hook_scale``).
    """
    report = json.loads(_native.dla(model, text, target=target, minus=minus, position=position))
    df = pd.DataFrame(report["pieces"], columns=["label", "layer", "head", "value"])
    df = df.astype({"layer": "Int64", "head": "Int64"})
    df.attrs = {k: report[k] for k in ("target", "logit", "bias", "scale", "position", "token",
                                       "sum")}
    return df


def attribution_graph(
    model: _native.Model,
    text: Text,
    saes: Sequence[_native.Sae],
    *,
    target: str | None = None,
    minus: str | None = None,
    probe: str | PathLike[str] | None = None,
    position: int | None = None,
    nodes_per_layer: int = 12,
    edge_threshold: float = 0.02,
) -> dict[str, Any]:
    """A feature attribution graph from the prompt's tokens through the dictionaries'
    features (and their error terms) to a target: a token's logit (``target``, optionally
    ``− minus``) or a probe's logit (``probe``: a probe directory). Attention patterns and norm
    scales are frozen; edges are gradient × activation; ``nodes_per_layer`` features are kept
    per dictionary, edges under ``edge_threshold`` of the largest are dropped.

    Returns a dict: ``nodes`` and ``edges`` as DataFrames (edges' ``source``/``target`` are
    row numbers of ``nodes``), ``paths`` (the strongest token-to-target paths, each a list of
    node rows and its effect), ``target``, ``target_value``, ``tokens``, ``dictionaries``,
    ``backward_passes``: the document ``glassbox graph --out`` writes, with tables.
    """
    graph = json.loads(
        _native.graph(model, text, list(saes), target=target, minus=minus,
                      probe=None if probe is None else str(probe), position=position,
                      nodes_per_layer=nodes_per_layer, edge_threshold=edge_threshold)
    )
    graph["nodes"] = pd.DataFrame(
        graph["nodes"],
        columns=["kind", "column", "position", "feature", "activation", "influence", "label"],
    ).astype({"feature": "Int64"})
    graph["edges"] = pd.DataFrame(graph["edges"], columns=["source", "target", "weight", "effect"])
    return graph
