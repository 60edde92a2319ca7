"""What the Python layer costs (run by bench/python.sh): `run_with_cache` against the Rust
library's forward pass on the same input and hooks, in one process, and Python hooks.

Prints a table; medians of --repeats runs after a warm-up."""

from __future__ import annotations

import argparse
import statistics
import time

import glassbox as gb

TEXT = (
    "Glassbox runs a transformer with named hook points, records and patches activations, "
    "and builds catalogs of the features a sparse dictionary finds in them. "
)


def median_seconds(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per text")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    model = gb.Model.load(args.model)
    ids = model.to_tokens(TEXT * 20)[0, : args.tokens].tolist()
    rows = []
    for batch in (1, 32):
        inp = [ids] * batch
        kinds = [("resid_post, every layer", "blocks.*.hook_resid_post")]
        if batch == 1:  # every hook at batch 32 is gigabytes of attention patterns
            kinds.append(("every hook point", None))
        for label, names in kinds:
            rust = model._forward_seconds(inp, names_filter=names, repeats=args.repeats)
            py = median_seconds(lambda: model.run_with_cache(inp, names_filter=names), args.repeats)
            _, cache = model.run_with_cache(inp, names_filter=names)
            mb = sum(a.nbytes for a in cache.values()) / 2**20
            rows.append((f"run_with_cache, {label}", batch, rust, py, mb))
        noop = [("blocks.*.hook_resid_post", lambda a, h: None)]
        rust = model._forward_seconds(inp, names_filter=[], repeats=args.repeats)
        py = median_seconds(lambda: model.run_with_hooks(inp, fwd_hooks=noop), args.repeats)
        rows.append(("run_with_hooks, no-op Python hook per layer", batch, rust, py, float("nan")))
        py = median_seconds(lambda: model.run_with_hooks(inp, fwd_hooks=[]), args.repeats)
        rows.append(("run_with_hooks, no hooks", batch, rust, py, float("nan")))
    print(f"{model} · {args.tokens} tokens per row · median of {args.repeats}")
    print(f"{'path':<46} {'batch':>5} {'Rust ms':>9} {'Python ms':>10} {'overhead':>9} {'cache MB':>9}")
    for label, batch, rust, py, mb in rows:
        print(f"{label:<46} {batch:>5} {1e3 * rust:>9.1f} {1e3 * py:>10.1f} {100 * (py / rust - 1):>8.1f}% {mb:>9.1f}")


if __name__ == "__main__":
    main()
