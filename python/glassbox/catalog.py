"""Feature catalogs as pandas tables and plain dicts."""

from __future__ import annotations

import json
from os import PathLike
from typing import Any

import pandas as pd

from . import _native


class Catalog:
    """A feature catalog built by ``glassbox catalog build``.

    ``Catalog.open(dir)`` reads the SQLite catalog in ``dir``; ``Catalog.open(dir,
    store="postgres://…")`` reads one kept in PostgreSQL (its search index stays in ``dir``).
    """

    def __init__(self, native: _native.Catalog):
        self._native = native
        self.meta: dict[str, Any] = json.loads(native.meta_json())
        """What the catalog was built from: model, dictionary, hook, corpus, hashes, tokens."""

    @classmethod
    def open(cls, path: str | PathLike[str], store: str | None = None) -> "Catalog":
        return cls(_native.Catalog.open(str(path), store))

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"Catalog({m['dict']!r} on {m['model']!r} at {m['hook']}, "
            f"{m['d_sae']} features, {m['tokens']} tokens)"
        )

    def features(self) -> pd.DataFrame:
        """One row per feature: id, count, density, max, label, label_score, flags."""
        rows = json.loads(self._native.summaries_json())
        return self._table(rows)

    def feature(self, feature_id: int) -> dict[str, Any]:
        """Everything the catalog holds about one feature (examples, vocabulary effects,
        neighbours, label, flags) as a dict. Unknown ids raise KeyError."""
        text = self._native.feature_json(feature_id)
        if text is None:
            raise KeyError(
                f"feature {feature_id} is not in the catalog (ids 0..{self.meta['d_sae'] - 1})"
            )
        card = json.loads(text)
        card["density"] = card["count"] / max(self.meta["tokens"], 1)
        return card

    def search(
        self,
        query: str | None = None,
        *,
        flag: str | None = None,
        token: str | None = None,
        limit: int = 20,
    ) -> pd.DataFrame:
        """Features matching words (full-text over labels and contexts), flagged for a
        concept, or firing on a token: a table of the feature rows with a ``score`` column,
        best first."""
        given = [x is not None for x in (query, flag, token)]
        if sum(given) != 1:
            raise ValueError("give exactly one of: query words, flag=CONCEPT, token=TOKEN")
        if query is not None:
            hits = self._native.search(query, limit)
        elif flag is not None:
            hits = self._native.flagged(flag, limit)
        else:
            hits = [(j, float(n)) for j, n in self._native.on_token(token, limit)]
        by_id = {row["id"]: row for row in json.loads(self._native.summaries_json())}
        rows = [dict(by_id[j], score=s) for j, s in hits if j in by_id]
        return self._table(rows)

    def _table(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        columns = ["id", "count", "density", "max", "label", "label_score", "flags"]
        tokens = max(self.meta["tokens"], 1)
        for r in rows:
            r["density"] = r["count"] / tokens
        extra = ["score"] if rows and "score" in rows[0] else []
        return pd.DataFrame(rows, columns=columns + extra).set_index("id")
