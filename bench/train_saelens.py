#!/usr/bin/env python3
"""SAELens side of bench/train.sh: the same TopK SAE (16k latents, k=32) trained by SAELens's
TopKTrainingSAE + torch Adam on the same activation store, same batch size, steps, learning
rate and schedule (Glassbox's: linear warm-up, then a linear decay over the last 20 %); reports
tokens/s, peak memory and FVE on the same held-out store, beside Glassbox's row."""
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
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--glassbox", type=Path, required=True, help="JSON of the Glassbox run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = load_store(args.acts, args.steps * args.batch)
    d = x.shape[1]
    scale = float(d ** 0.5 / x[: args.batch].norm(dim=1).mean())
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=args.width, k=args.k, aux_loss_coefficient=1 / 32))
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    decay_start = int(0.8 * args.steps)

    def schedule(step):  # as glassbox_dictionary::train::TrainConfig::lr_at
        warm = (step + 1) / args.warmup if step < args.warmup else 1.0
        decay = 1.0 - (step - decay_start) / (args.steps - decay_start) if step >= decay_start else 1.0
        return warm * decay

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    fired = torch.zeros(args.width)
    perm = torch.randperm(len(x))
    start = time.perf_counter()
    for step in range(args.steps):
        batch = x[perm[step * args.batch : (step + 1) * args.batch]] * scale
        out = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients={}, dead_neuron_mask=fired > 1e6,
                                                       n_training_steps=step, is_logging_step=False))
        out.loss.backward()
        opt.step()
        sched.step()
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
    runs = json.loads(args.glassbox.read_text())
    same = runs[0]
    print(f"\nTopK SAE, d_in {d}, {args.width} latents, k={args.k}, batch {args.batch}, lr {args.lr}, 2 threads")
    print(f"{'':<30}{'steps':>6}{'seconds':>9}{'tokens/s':>10}{'peak MB':>9}{'FVE (held-out)':>16}")
    print(f"{'SAELens ' + __import__('sae_lens').__version__:<30}{args.steps:>6}{secs:>9.1f}{tps:>10.0f}{peak_mb:>9.0f}{f:>16.4f}")
    for r in runs:
        print(f"{'glassbox':<30}{r['steps']:>6}{r['seconds']:>9.1f}{r['tokens_per_second']:>10.0f}{r['peak_rss_mb']:>9.0f}{r['fve']:>16.4f}")
    print(f"throughput ratio at equal steps: {same['tokens_per_second'] / tps:.2f}x")
    reach = next((r for r in runs if r["fve"] >= f), None)
    if reach:
        print(f"time to SAELens's held-out FVE {f:.4f}: glassbox {reach['seconds']:.1f} s ({reach['steps']} steps) "
              f"vs SAELens {secs:.1f} s: {secs / reach['seconds']:.2f}x")
    else:
        print(f"glassbox did not reach SAELens's FVE {f:.4f} within {runs[-1]['steps']} steps")


if __name__ == "__main__":
    main()
