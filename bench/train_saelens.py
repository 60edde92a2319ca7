#!/usr/bin/env python3
"""SAELens side of bench/train.sh: the same TopK SAE (16k latents, k=32) trained by SAELens's
TopKTrainingSAE + torch Adam on the same activation store, same batch size, steps and learning
rate; reports tokens/s, peak memory and FVE on the same held-out store, beside Glassbox's row."""
import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput


def load_store(path: Path, max_rows: int) -> torch.Tensor:
    manifest = json.loads((path / "manifest.json").read_text())
    rows, n = [], 0
    for shard in manifest["shards"]:
        a = load_file(str(path / shard["file"]))["activations"].astype(np.float32)
        rows.append(a)
        n += len(a)
        if n >= max_rows:
            break
    return torch.from_numpy(np.concatenate(rows)[:max_rows])


def fve(x: torch.Tensor, xhat: torch.Tensor) -> float:
    err = ((x - xhat) ** 2).sum()
    var = ((x - x.mean(0)) ** 2).sum()
    return float(1 - err / var)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--acts", type=Path, required=True)
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--glassbox", type=Path, required=True, help="JSON of the Glassbox run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = load_store(args.acts, args.steps * args.batch)
    d = x.shape[1]
    scale = float(d ** 0.5 / x[: args.batch].norm(dim=1).mean())
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=args.width, k=args.k, aux_loss_coefficient=1 / 32))
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    fired = torch.zeros(args.width)
    perm = torch.randperm(len(x))
    start = time.perf_counter()
    for step in range(args.steps):
        batch = x[perm[step * args.batch : (step + 1) * args.batch]] * scale
        out = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients={}, dead_neuron_mask=fired > 1e6,
                                                       n_training_steps=step, is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            active = (out.feature_acts > 0).any(0)
            fired = torch.where(active, torch.zeros_like(fired), fired + args.batch)
    secs = time.perf_counter() - start
    with torch.no_grad():
        ev = load_store(args.eval, 200_000)
        xhat = torch.cat([sae.decode(sae.encode(c * scale)) / scale for c in ev.split(4096)])
        f = fve(ev, xhat)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tps = args.steps * args.batch / secs
    ours = json.loads(args.glassbox.read_text())
    print(f"\nTopK SAE, d_in {d}, {args.width} latents, k={args.k}, batch {args.batch}, {args.steps} steps, 2 threads")
    print(f"{'':<22}{'tokens/s':>10}{'peak MB':>10}{'FVE (held-out)':>16}")
    print(f"{'glassbox':<22}{ours['tokens_per_second']:>10.0f}{ours['peak_rss_mb']:>10.0f}{ours['fve']:>16.4f}")
    print(f"{'SAELens ' + __import__('sae_lens').__version__:<22}{tps:>10.0f}{peak_mb:>10.0f}{f:>16.4f}")
    print(f"{'ratio':<22}{ours['tokens_per_second'] / tps:>9.2f}x")


if __name__ == "__main__":
    main()
