"""What the Python layer costs (run by bench/python.sh): `run_with_cache` against the Rust
library's forward pass on the same input and hooks, in one process, and Python hooks.

Prints a table; medians of --repeats runs after a warm-up. The Rust and Python runs alternate,
and the overhead is the median of each pair's ratio, so the machine's drift (it is shared) falls
on both sides alike."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

import glassbox as gb

TEXT = (
    "Glassbox runs a transformer with named hook points, records and patches activations, "
    "and builds catalogs of the features a sparse dictionary finds in them. "
)


def seconds(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def paired(rust, py, repeats: int) -> tuple[float, float, float]:
    """Median Rust and Python seconds, and the median of the per-pair overheads."""
    rust(), py()
    pairs = [(rust(), seconds(py)) for _ in range(repeats)]
    r = statistics.median(p[0] for p in pairs)
    p = statistics.median(p[1] for p in pairs)
    return r, p, statistics.median(b / a - 1 for a, b in pairs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per text")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tl-python", help="a Python with TransformerLens: adds its column (bench/python_tl.py)")
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
            timed = paired(
                lambda: model._forward_seconds(inp, names_filter=names, repeats=1),
                lambda: model.run_with_cache(inp, names_filter=names),
                args.repeats,
            )
            _, cache = model.run_with_cache(inp, names_filter=names)
            mb = sum(a.nbytes for a in cache.values()) / 2**20
            rows.append((f"run_with_cache, {label}", batch, *timed, mb))
        bare = lambda: model._forward_seconds(inp, names_filter=[], repeats=1)  # noqa: E731
        noop = [("blocks.*.hook_resid_post", lambda a, h: None)]
        timed = paired(bare, lambda: model.run_with_hooks(inp, fwd_hooks=noop), args.repeats)
        rows.append(("run_with_hooks, no-op Python hook per layer", batch, *timed, float("nan")))
        timed = paired(bare, lambda: model.run_with_hooks(inp, fwd_hooks=[]), args.repeats)
        rows.append(("run_with_hooks, no hooks", batch, *timed, float("nan")))
    print(f"{model} · {args.tokens} tokens per row · median of {args.repeats} alternating pairs")
    print(f"{'path':<46} {'batch':>5} {'Rust ms':>9} {'Python ms':>10} {'overhead':>9} {'cache MB':>9}")
    for label, batch, rust, py, overhead, mb in rows:
        print(f"{label:<46} {batch:>5} {1e3 * rust:>9.1f} {1e3 * py:>10.1f} {100 * overhead:>8.1f}% {mb:>9.1f}")
    if args.tl_python:
        compare_with_transformerlens(args, model, ids, rows)


def compare_with_transformerlens(args, model, ids, rows) -> None:
    """The same model file, input and hooks in TransformerLens, beside Glassbox's Python rows."""
    out = subprocess.run(
        [args.tl_python, "bench/python_tl.py", "--gguf", str(model.path), "--repeats", str(args.repeats),
         "--ids", ",".join(map(str, ids))],
        check=True, capture_output=True, text=True,
    )
    tl = json.loads(out.stdout.strip().splitlines()[-1])
    ours = {(label, batch): py for label, batch, _, py, _, _ in rows}
    # TransformerLens's plain forward stands beside Glassbox's run_with_hooks without hooks.
    ours.update({("forward, no hooks", b): ours[("run_with_hooks, no hooks", b)] for b in (1, 32)})
    print(f"\nTransformerLens {tl['transformer_lens']} (torch {tl['torch']}, TransformerBridge, same GGUF "
          f"dequantised to f32, {tl['threads']} threads) · median of {args.repeats}")
    print(f"{'path':<46} {'batch':>5} {'Glassbox ms':>12} {'TL ms':>10} {'TL / Glassbox':>14}")
    for label, batch, ms in tl["rows"]:
        g = 1e3 * ours.get((label, batch), float("nan"))
        print(f"{label:<46} {batch:>5} {g:>12.1f} {ms:>10.1f} {ms / g:>13.2f}x")


if __name__ == "__main__":
    main()
