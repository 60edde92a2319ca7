#!/usr/bin/env python3
"""Logit-lens and direct-logit-attribution references computed by TransformerLens.

Not run by CI: its outputs are committed as `lens.safetensors` beside each decoder fixture
(crates/glassbox-model/tests/fixtures/tiny-gpt2, tiny-llama), so the Rust tests need no PyTorch.
Re-run after changing what is checked:

    .venv/bin/pip install transformer-lens  # 3.9; also needs torch and transformers
    .venv/bin/python scripts/reference/lens_fixtures.py

The checkpoint each fixture directory holds (made by make_fixtures.py) is loaded with
`transformers`, converted with TransformerLens's own weight converters and processed with
`fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False`:
folding the norm weight into W_U is what TransformerLens's attribution functions assume, and
leaving the rest unprocessed keeps a token's attribution comparable with the raw model.

Per prompt p it writes
  p{p}.lens             [n_layers + 1, pos, vocab]  accumulated_resid(apply_ln=True) → unembed
  p{p}.scale            ln_final.hook_scale at the last position
  p{p}.target / .other  the top and second token at the last position
  p{p}.heads.token      logit_attrs(stack_head_results(), target)  [n_layers * n_heads]
                        (logit_attrs centres and divides by the cached ln_final scale itself)
  p{p}.heads.diff       the same for target − other
  p{p}.resid.token      logit_attrs(decompose_resid()) — embed, [pos_embed],
  p{p}.resid.diff       then attn_out and mlp_out of each layer
"""
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights
from transformers import AutoModelForCausalLM

FIXTURES = Path(__file__).resolve().parents[2] / "crates/glassbox-model/tests/fixtures"


def tl_config(hf):
    c = hf.config
    common = dict(
        d_model=c.hidden_size,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        d_head=c.hidden_size // c.num_attention_heads,
        d_vocab=c.vocab_size,
        device="cpu",
    )
    if c.model_type == "gpt2":
        return HookedTransformerConfig(
            **common, n_ctx=c.n_positions, d_mlp=4 * c.hidden_size, act_fn="gelu_new",
            normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
            original_architecture="GPT2LMHeadModel")
    return HookedTransformerConfig(
        **common, n_ctx=c.max_position_embeddings, d_mlp=c.intermediate_size, act_fn="silu",
        normalization_type="RMS", eps=c.rms_norm_eps, positional_embedding_type="rotary",
        rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=c.rope_parameters["rope_theta"], final_rms=True,
        gated_mlp=True, n_key_value_heads=c.num_key_value_heads, original_architecture="LlamaForCausalLM")


def fixture(name, convert):
    d = FIXTURES / name
    hf = AutoModelForCausalLM.from_pretrained(d).eval()
    cfg = tl_config(hf)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert(hf, cfg), fold_ln=True, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False,
                                      refactor_factored_attn_matrices=False)
    model.eval()
    ref = safe_open_ids(d)
    out = {}
    for p, ids in enumerate(ref):
        tokens = ids.unsqueeze(0)
        logits, cache = model.run_with_cache(tokens)
        hf_logits = hf(tokens).logits
        err = (logits - hf_logits).abs().max().item()
        assert err < 1e-4, f"{name}: TransformerLens and transformers disagree by {err}"
        lens = model.unembed(cache.accumulated_resid(layer=-1, apply_ln=True))  # [L+1, 1, pos, vocab]
        out[f"p{p}.lens"] = lens[:, 0]
        out[f"p{p}.scale"] = cache["ln_final.hook_scale"][0, -1, 0].reshape(1)
        top2 = logits[0, -1].topk(2).indices
        target, other = top2[0].item(), top2[1].item()
        out[f"p{p}.target"] = torch.tensor([target])
        out[f"p{p}.other"] = torch.tensor([other])
        # logit_attrs applies the cached final-norm scale itself: the stacks go in raw.
        heads = cache.stack_head_results(layer=-1, pos_slice=-1)  # [L*H, 1, d]
        resid = cache.decompose_resid(layer=-1, pos_slice=-1, mode="all", incl_embeds=True)
        for key, stack in (("heads", heads), ("resid", resid)):
            out[f"p{p}.{key}.token"] = cache.logit_attrs(stack, tokens=target, pos_slice=-1)[:, 0]
            out[f"p{p}.{key}.diff"] = cache.logit_attrs(
                stack, tokens=target, incorrect_tokens=other, pos_slice=-1)[:, 0]
        print(f"{name} prompt {p}: {tokens.shape[1]} tokens, TL vs HF logits {err:.2e}")
    save_file({k: v.detach().float().contiguous() for k, v in out.items()}, d / "lens.safetensors")


def safe_open_ids(d):
    from safetensors import safe_open

    with safe_open(d / "reference.safetensors", "pt") as f:
        keys = sorted(k for k in f.keys() if k.endswith(".ids"))
        return [f.get_tensor(k) for k in keys]


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    fixture("tiny-gpt2", convert_gpt2_weights)
    fixture("tiny-llama", convert_llama_weights)
