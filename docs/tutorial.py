"""Glassbox from Python, end to end: load a model, look inside it, catalog the features of a
sparse dictionary, find one, and steer the model with it.

    source "$(scripts/python-env)/bin/activate"
    python docs/tutorial.py                      # SmolLM2: 9 min on 2 cores, most of it the CLI steps
    python docs/tutorial.py --model PATH --tokens 3000 --steps 100   # quicker, any model

The harvest, training and catalog steps run the `glassbox` command line (the same library the
Python package wraps); everything else is Python. The test suite runs this file
(python/tests/test_tutorial.py) on a tiny model, so every line here works.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

import glassbox as gb


def glassbox(*args: str) -> None:
    """Runs the CLI (GLASSBOX_BIN, else `glassbox` on the PATH, else the release build)."""
    exe = os.environ.get("GLASSBOX_BIN") or shutil.which("glassbox") or "target/release/glassbox"
    subprocess.run([exe, *args, "--json"], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="packaged name, model directory or GGUF file")
    ap.add_argument("--layer", type=int, default=None, help="block whose residual stream to study (default: the middle)")
    ap.add_argument("--corpus", default=None, help="text corpus (default: the one `glassbox setup` installed)")
    ap.add_argument("--tokens", type=int, default=50_000, help="tokens to harvest and catalog")
    ap.add_argument("--steps", type=int, default=400, help="dictionary training steps (batches of 1024 tokens)")
    ap.add_argument("--work", default="glassbox-work/tutorial", help="where the harvest, dictionary and catalog go")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    # 1. Load a model and look inside: every hook point, TransformerLens's names and shapes.
    model = gb.Model.load(args.model)
    print(model)
    layer = args.layer if args.layer is not None else model.cfg["n_layers"] // 2
    hook = f"blocks.{layer}.hook_resid_pre"
    prompt = "The weather today is sunny and warm, so we"
    logits, cache = model.run_with_cache(prompt, names_filter="blocks.*.hook_resid_post")
    print("tokens:", model.to_str_tokens(prompt))
    print("next token:", repr(model.to_string([int(logits[0, -1].argmax())])))
    norms = {name: float(np.linalg.norm(a[0, -1])) for name, a in cache.items()}
    print("residual norm at the last token, by layer:", [round(v, 1) for v in norms.values()])

    # 2. Catalog it: harvest the residual stream over a corpus, train a sparse dictionary on
    #    it, and build the catalog of its features (contexts, vocabulary effects, labels).
    corpus = ["--corpus", args.corpus] if args.corpus else []
    acts, dict_dir, catalog_dir = work / "acts", work / "dict", work / "catalog"
    glassbox("harvest", "--model", args.model, "--hook", hook, *corpus,
             "--tokens", str(args.tokens), "--context", "64", "--out", str(acts))
    glassbox("train-dict", "--acts", str(acts), "--out", str(dict_dir), "--k", "16",
             "--width", str(8 * model.cfg["d_model"]), "--steps", str(args.steps), "--batch", "1024")
    glassbox("catalog", "build", "--model", args.model, "--dict", str(dict_dir), *corpus,
             "--tokens", str(args.tokens), "--context", "64", "--catalog", str(catalog_dir))
    sae = gb.Sae.load(dict_dir)
    catalog = gb.Catalog.open(catalog_dir)
    print(sae)
    print(catalog)

    # 3. Find a feature: the catalog is a pandas table; take a frequent, well-labelled one.
    features = catalog.features()
    common = features[(features["density"] > 0.001) & (features["density"] < 0.1)]
    if common.empty:  # a tiny run: take any feature that fired
        common = features[features["count"] > 0]
    chosen = int(common.sort_values("label_score", ascending=False).index[0])
    card = catalog.feature(chosen)
    print(f"\nfeature {chosen}: {card['label']!r}, fires on {100 * card['density']:.2f}% of tokens")
    for ex in card["examples"][:3]:
        peak = ex["tokens"][ex["focus"]]
        print(f"    {ex['activation']:.2f} at {peak!r} in {ex['text'] or ''.join(ex['tokens'])!r}")

    # 4. Read it on a new text: encode the cached activations with the dictionary.
    _, cache = model.run_with_cache(prompt, names_filter=hook)
    acts_now = sae.encode(cache[hook][0])
    print(f"its activation on {prompt!r}: max {acts_now[:, chosen].max():.3f}")

    # 5. Steer: add the feature's decoder direction to the residual stream at every position.
    direction = sae.W_dec[chosen]
    scale = 4.0 * float(np.linalg.norm(cache[hook][0], axis=-1).mean()) / float(np.linalg.norm(direction))

    def steer(activation: np.ndarray, hook: gb.Hook) -> np.ndarray:
        return activation + scale * direction

    steered = model.run_with_hooks(prompt, fwd_hooks=[(hook, steer)])
    changed = float(np.abs(steered - logits).max())
    print(f"steering changes the logits by up to {changed:.2f}")
    if model.cfg["is_decoder"]:
        top = lambda l: model.to_string([int(l[0, -1].argmax())])  # noqa: E731
        print(f"next token: {top(logits)!r} → steered {top(steered)!r}")
    assert changed > 0, "steering had no effect"
    # The feature reads its own direction back: encode the residual stream as steered.
    boosted = sae.encode(cache[hook][0] + scale * direction)[:, chosen]
    print(f"feature {chosen} on the steered stream: max {boosted.max():.3f} (was {acts_now[:, chosen].max():.3f})")
    assert boosted.max() > acts_now[:, chosen].max()


if __name__ == "__main__":
    main()
