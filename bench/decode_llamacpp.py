#!/usr/bin/env python3
"""llama.cpp's side of bench/decode.sh: the same GGUF, prompt and token counts, 2 threads.

Runs llama.cpp's server in-process (PyPI `xllamacpp`, a prebuilt CPU wheel) and reads its own
timings; prints one JSON line like the Glassbox bench binary. One case per process (peak RSS).
"""
import argparse
import json
import resource
import time

import xllamacpp as xlc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompt-ids", required=True, help="JSON file with the prompt's token ids")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    ids = json.load(open(a.prompt_ids))
    p = xlc.CommonParams()
    p.model.path = a.gguf
    p.n_ctx = len(ids) + a.new_tokens + 16
    p.n_batch = 512
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.n_parallel = 1
    t = time.time()
    server = xlc.Server(p)
    load_s = time.time() - t
    prefill, decode = [], []
    for r in range(a.repeats):
        res = server.handle_completions({
            "prompt": ids, "n_predict": a.new_tokens, "temperature": 0, "ignore_eos": True,
            "cache_prompt": False, "seed": r,
        })
        timings = res["timings"]
        assert timings["prompt_n"] == len(ids), timings
        prefill.append(timings["prompt_per_second"])
        decode.append(timings["predicted_per_second"])
    median = lambda v: sorted(v)[len(v) // 2]
    print(json.dumps({
        "runtime": "llama.cpp", "threads": a.threads, "prompt_tokens": len(ids),
        "new_tokens": a.new_tokens, "load_s": load_s, "prefill_tok_s": median(prefill),
        "decode_tok_s": median(decode),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
