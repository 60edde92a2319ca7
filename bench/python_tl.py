"""TransformerLens on the same model and input as bench/python.py, for the side-by-side table
(run by bench/python.sh when a TransformerLens environment exists; not in CI).

Loads the GGUF with transformers (dequantised to f32, as Glassbox does), wraps it in
TransformerLens 4's TransformerBridge, and times `run_with_cache` with the same hooks, batch sizes
and threads as the Glassbox rows. Prints rows of path, batch and median milliseconds as JSON."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

from importlib.metadata import version

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer


def median_ms(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True, help="the model file bench/python.py loaded")
    ap.add_argument("--ids", required=True, help="the token ids, comma-separated")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    folder, name = args.gguf.rsplit("/", 1)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, torch_dtype=torch.float32, attn_implementation="eager"
    )
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tok, device="cpu")
    ids = [int(i) for i in args.ids.split(",")]
    layers = bridge.cfg.n_layers
    resid = [f"blocks.{i}.hook_resid_post" for i in range(layers)]
    rows = []
    with torch.inference_mode():
        for batch in (1, 32):
            x = torch.tensor([ids] * batch)
            rows.append(("run_with_cache, resid_post, every layer", batch,
                         median_ms(lambda: bridge.run_with_cache(x, names_filter=resid), args.repeats)))
            if batch == 1:
                rows.append(("run_with_cache, every hook point", batch,
                             median_ms(lambda: bridge.run_with_cache(x), args.repeats)))
            rows.append(("forward, no hooks", batch, median_ms(lambda: bridge(x), args.repeats)))
    print(json.dumps({"torch": torch.__version__, "transformer_lens": version("transformer_lens"),
                      "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
