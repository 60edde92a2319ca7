"""Glassbox from Python: models with TransformerLens-style hooks, sparse dictionaries in
SAELens's format and feature catalogs, as NumPy arrays and pandas tables, on the same Rust
library the ``glassbox`` command line uses.

>>> import glassbox as gb
>>> model = gb.Model.load("smollm2")                      # doctest: +SKIP
>>> logits, cache = model.run_with_cache("The capital of France is",
...                                      names_filter="blocks.*.hook_resid_post")  # doctest: +SKIP
>>> cache["blocks.3.hook_resid_post"].shape               # doctest: +SKIP
(1, 6, 576)
"""

from . import analysis
from ._native import GlassboxError, Hook, Model, Sae, SentenceProbe, __version__
from .catalog import Catalog
from .client import Client, ServerError

__all__ = ["analysis", "Catalog", "Client", "GlassboxError", "Hook", "Model", "Sae", "SentenceProbe", "ServerError", "__version__"]
