#!/usr/bin/env python3
"""PyTorch CPU reference for bench/forward.sh: the same MiniLM, shapes, hooks and timing rule
as crates/glassbox-model/benches/forward.rs; prints both side by side with the ratio."""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoTokenizer, BertModel

TEXT = ("Interpretability research asks what computation a trained network performs, "
        "and tests its answers by intervening on the network's activations. ")


def measure(model, ids, hooks, budget):
    kwargs = {}
    if hooks == "resid":
        kwargs = {"output_hidden_states": True}
    elif hooks == "all":
        kwargs = {"output_hidden_states": True, "output_attentions": True}

    def run():
        start = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids, **kwargs)
        return time.perf_counter() - start

    run()
    times, begin = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - begin < budget and len(times) < 200):
        times.append(run())
    return ids.numel() / statistics.median(times), len(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--glassbox", required=True, help="JSON written by the Rust bench")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.model)
    # "eager" attention returns patterns, as Glassbox's "all" hook set does.
    model = BertModel.from_pretrained(args.model, attn_implementation="eager").eval()
    ours = json.load(open(args.glassbox))
    print(f"\nMiniLM-L6 forward, tokens/s (median), torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'seq':>4} {'hooks':<6} {'glassbox':>9} {'pytorch':>9} {'ratio':>6}")
    for row in ours:
        ids = tok(TEXT * 20, truncation=True, max_length=512, return_tensors="pt")["input_ids"][:, : row["seq"]]
        ids = ids.repeat(row["batch"], 1)
        tps, _ = measure(model, ids, row["hooks"], args.seconds)
        ratio = row["tokens_per_s"] / tps
        print(f"{row['batch']:>5} {row['seq']:>4} {row['hooks']:<6} {row['tokens_per_s']:>9.0f} {tps:>9.0f} {ratio:>5.2f}x")


if __name__ == "__main__":
    main()
