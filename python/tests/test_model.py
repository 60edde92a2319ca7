"""Models from Python: the arrays are the Rust path's, bit for bit; names and shapes are
TransformerLens's; Python hooks change the forward pass as they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import glassbox as gb
from conftest import cli_json, read_safetensors

PROMPT = "The Eiffel Tower is in the city of"


def test_cache_equals_the_cli_bit_for_bit(smollm2, tmp_path):
    hooks = ["blocks.*.hook_resid_post", "blocks.7.attn.hook_pattern", "hook_logits"]
    saved = tmp_path / "acts.safetensors"
    args = ["run", "--model", "smollm2", PROMPT, "--save", str(saved)]
    for h in hooks:
        args += ["--hook", h]
    report = cli_json(*args)
    from_cli = read_safetensors(saved)
    logits, cache = smollm2.run_with_cache(PROMPT, names_filter=hooks)
    assert list(cache) == [h for h in smollm2.hook_names if h in from_cli]
    assert len(cache) == smollm2.cfg["n_layers"] + 2
    for name, arr in cache.items():
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
        assert np.array_equal(arr, from_cli[name]), name
    assert np.array_equal(logits, from_cli["hook_logits"])
    assert smollm2.to_tokens(PROMPT)[0].tolist() == report["token_ids"]


def test_results_are_read_only_views_that_outlive_the_model():
    model = gb.Model.load("smollm2")
    logits, cache = model.run_with_cache(PROMPT, names_filter=["blocks.3.hook_resid_post", "blocks.3.attn.hook_pattern"])
    kept = {name: arr.copy() for name, arr in cache.items()}
    for arr in [logits, *cache.values()]:
        # No copy: the array views memory it does not own, and cannot be written.
        assert not arr.flags.owndata and not isinstance(arr.base, np.ndarray)
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[..., 0] = 1.0
        with pytest.raises(ValueError):
            arr.flags.writeable = True
    first = logits[0, -1].copy()
    pattern = cache["blocks.3.attn.hook_pattern"]
    # The model and the rest of the cache go; the arrays still hold their values.
    del model, cache
    import gc

    gc.collect()
    assert np.array_equal(logits[0, -1], first)
    assert np.array_equal(pattern, kept["blocks.3.attn.hook_pattern"])
    np.testing.assert_allclose(pattern[0].sum(-1), 1.0, atol=1e-5)


def test_names_and_shapes_follow_transformerlens(smollm2):
    cfg = smollm2.cfg
    n, d, h, kv, dh = (cfg[k] for k in ("n_layers", "d_model", "n_heads", "n_key_value_heads", "d_head"))
    tokens = smollm2.to_tokens(PROMPT)
    assert tokens.dtype == np.int64 and tokens.shape[0] == 1
    pos = tokens.shape[1]
    assert smollm2.to_string(tokens).endswith(PROMPT)
    assert len(smollm2.to_str_tokens(PROMPT)) == pos
    logits, cache = smollm2.run_with_cache(tokens, names_filter=lambda name: name.startswith("blocks.2."))
    assert logits.shape == (1, pos, cfg["d_vocab"])
    assert set(cache) == {x for x in smollm2.hook_names if x.startswith("blocks.2.")}
    shapes = {
        "blocks.2.hook_resid_pre": (1, pos, d),
        "blocks.2.attn.hook_q": (1, pos, h, dh),
        "blocks.2.attn.hook_k": (1, pos, kv, dh),
        "blocks.2.attn.hook_v": (1, pos, kv, dh),
        "blocks.2.attn.hook_pattern": (1, h, pos, pos),
        "blocks.2.attn.hook_z": (1, pos, h, dh),
        "blocks.2.hook_attn_out": (1, pos, d),
        "blocks.2.mlp.hook_post": (1, pos, cfg["d_mlp"]),
        "blocks.2.hook_resid_post": (1, pos, d),
    }
    for name, shape in shapes.items():
        assert cache[name].shape == shape, name
    # The residual stream adds up, and attention patterns are causal distributions.
    c = cache
    np.testing.assert_allclose(c["blocks.2.hook_resid_mid"], c["blocks.2.hook_resid_pre"] + c["blocks.2.hook_attn_out"], atol=1e-4)
    np.testing.assert_allclose(c["blocks.2.hook_resid_post"], c["blocks.2.hook_resid_mid"] + c["blocks.2.hook_mlp_out"], atol=1e-4)
    pattern = c["blocks.2.attn.hook_pattern"][0]
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(pattern, k=1) == 0)


def test_a_batch_is_its_rows(smollm2):
    texts = ["Hello there, my friend.", "Two words"]
    _, batch = smollm2.run_with_cache(texts, names_filter="blocks.5.hook_resid_post")
    for i, text in enumerate(texts):
        _, one = smollm2.run_with_cache(text, names_filter="blocks.5.hook_resid_post")
        n = one["blocks.5.hook_resid_post"].shape[1]
        np.testing.assert_allclose(batch["blocks.5.hook_resid_post"][i, :n], one["blocks.5.hook_resid_post"][0], atol=1e-3)


def test_python_hooks_change_the_output_as_they_say(smollm2):
    plain = smollm2.run_with_hooks(PROMPT, fwd_hooks=[])
    seen = {}

    def look(act, hook):
        seen[hook.name] = act.copy()

    same = smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.4.hook_resid_post", look)])
    np.testing.assert_allclose(same, plain, rtol=1e-5, atol=1e-4)
    _, cache = smollm2.run_with_cache(PROMPT, names_filter="blocks.4.hook_resid_post")
    assert np.array_equal(seen["blocks.4.hook_resid_post"], cache["blocks.4.hook_resid_post"])

    # The unembedding is linear without a bias: doubling the final norm's output doubles
    # the logits; zeroing it in place (returning None) zeroes them.
    doubled = smollm2.run_with_hooks(PROMPT, fwd_hooks=[("ln_final.hook_normalized", lambda a, h: 2 * a)])
    np.testing.assert_allclose(doubled, 2 * plain, rtol=1e-4, atol=1e-4)

    def zero(act, hook):
        act[:] = 0

    assert not smollm2.run_with_hooks(PROMPT, fwd_hooks=[("ln_final.hook_normalized", zero)]).any()

    # Several functions at one point run in order, each on the previous one's result.
    order = []
    both = smollm2.run_with_hooks(PROMPT, fwd_hooks=[
        ("ln_final.hook_normalized", lambda a, h: order.append(1) or 2 * a),
        ("ln_final.hook_normalized", lambda a, h: order.append(2) or a + 0),
        ("ln_final.hook_normalized", lambda a, h: order.append(3) or 1.5 * a),
    ])
    assert order == [1, 2, 3]
    np.testing.assert_allclose(both, 3 * plain, rtol=1e-4, atol=1e-3)

    # Patterns reach every matching hook point; hook.layer() is the block.
    layers = []
    smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.*.hook_mlp_out", lambda a, h: layers.append(h.layer()))])
    assert layers == list(range(smollm2.cfg["n_layers"]))

    # Ablating every attention head of every layer changes the prediction.
    ablated = smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.*.attn.hook_z", lambda a, h: np.zeros_like(a))])
    assert not np.allclose(ablated, plain, atol=0.1)


def test_generate_is_greedy_and_seeded(smollm2):
    logits, _ = smollm2.run_with_cache(PROMPT, names_filter=[])
    first = smollm2.to_string([int(logits[0, -1].argmax())])
    text = smollm2.generate(PROMPT, max_new_tokens=6)
    assert text.startswith(first) and len(text) > len(first)
    a = smollm2.generate(PROMPT, max_new_tokens=8, temperature=0.9, top_p=0.95, seed=3)
    assert a == smollm2.generate(PROMPT, max_new_tokens=8, temperature=0.9, top_p=0.95, seed=3)
    chat = smollm2.generate([{"role": "user", "content": "Say hello."}], max_new_tokens=4)
    assert isinstance(chat, str) and chat
    assert "Say hello." in smollm2.apply_chat_template([{"role": "user", "content": "Say hello."}])


def test_an_encoder_returns_its_last_hidden_state(minilm):
    hidden, cache = minilm.run_with_cache("a sentence to embed", names_filter="blocks.*.hook_resid_post")
    n = minilm.cfg["n_layers"]
    assert hidden.shape[-1] == minilm.cfg["d_model"] and len(cache) == n
    assert "hook_token_type_embed" in minilm.hook_names
    assert not minilm.cfg["is_decoder"]
    with pytest.raises(gb.GlassboxError, match="encoder"):
        minilm.generate("hello")


def test_read_whole_reads_a_long_text_in_overlapping_passes(minilm, tiny_gpt2):
    hook = "blocks.2.hook_resid_post"
    # The special tokens ([CLS] … [SEP]) are run but not returned.
    short = minilm.read_whole(PROMPT, hook)[hook]
    _, cache = minilm.run_with_cache(PROMPT, names_filter=hook)
    np.testing.assert_array_equal(short, cache[hook][0, 1:-1])
    # A text twice the context and more: every token once, each row as the pass that
    # returns it computed it (the first pass is the text's start, the last its end).
    tiny = gb.Model.load(str(tiny_gpt2))
    n_ctx = tiny.cfg["n_ctx"]
    text = " ".join(f"w{i % 7}" for i in range(3 * n_ctx))
    ids = tiny.to_tokens(text)[0]
    hooks = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    rows = tiny.read_whole(text, hooks)
    assert rows["blocks.0.hook_resid_post"].shape == (len(ids), tiny.cfg["d_model"])
    assert rows["blocks.1.attn.hook_z"].shape == (len(ids), tiny.cfg["n_heads"] * tiny.cfg["d_head"])
    _, first = tiny.run_with_cache(text, names_filter=hooks[0], truncate=True)
    np.testing.assert_array_equal(rows[hooks[0]][:n_ctx], first[hooks[0]][0])
    _, last = tiny.run_with_cache(ids[-n_ctx:].tolist(), names_filter=hooks[0])
    np.testing.assert_array_equal(rows[hooks[0]][-1], last[hooks[0]][0, -1])
    # Shorter passes read the same tokens; truncate keeps the first pass.
    assert tiny.read_whole(text, hooks[0], pass_tokens=8)[hooks[0]].shape[0] == len(ids)
    assert tiny.read_whole(text, hooks[0], truncate=True)[hooks[0]].shape[0] == n_ctx
    with pytest.raises(gb.GlassboxError, match="not a row per token"):
        tiny.read_whole(text, "blocks.0.attn.hook_pattern")
    with pytest.raises(gb.GlassboxError, match="pass_tokens"):
        tiny.read_whole(text, hooks[0], pass_tokens=0)
    with pytest.raises(gb.GlassboxError, match="no tokens"):
        tiny.read_whole("", hooks[0])


def test_bad_input_is_a_python_exception_never_a_crash(smollm2, tiny_gpt2, tmp_path):
    with pytest.raises(gb.GlassboxError, match="blocks.99.hook_resid_post"):
        smollm2.run_with_cache(PROMPT, names_filter="blocks.99.hook_resid_post")
    with pytest.raises(gb.GlassboxError, match="nothing_like_this"):
        smollm2.run_with_cache(PROMPT, names_filter="nothing_like_this*")
    with pytest.raises(TypeError, match="names_filter"):
        smollm2.run_with_cache(PROMPT, names_filter=3)
    with pytest.raises(gb.GlassboxError, match=r"shape \[1, \d+, 4\]"):
        smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: a[..., :4])])
    with pytest.raises(TypeError, match="int64"):
        smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: a.astype(np.int64))])
    with pytest.raises(TypeError, match="not an array"):
        smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: "oops")])
    with pytest.raises(TypeError, match="not a function"):
        smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_resid_pre", 42)])

    def boom(act, hook):
        raise ValueError("boom from the hook")

    with pytest.raises(ValueError, match="boom from the hook"):
        smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.3.hook_mlp_out", boom)])
    # float64 from a hook is converted, not refused.
    out = smollm2.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: a.astype(np.float64))])
    np.testing.assert_allclose(out, smollm2.run_with_hooks(PROMPT, fwd_hooks=[]), rtol=1e-5, atol=1e-4)
    with pytest.raises(gb.GlassboxError, match="outside the vocabulary"):
        smollm2.run_with_cache([10**9])
    # Over-long input (on a model with a short context, to keep it quick): refused, or cut.
    tiny = gb.Model.load(str(tiny_gpt2))
    assert tiny.path.resolve() == Path(tiny_gpt2).resolve()
    long_text = "word " * (2 * tiny.cfg["n_ctx"])
    with pytest.raises(gb.GlassboxError, match="longer than the model.*truncate=True"):
        tiny.run_with_cache(long_text)
    # Tokenizing is not running: every token, to read in windows, or the first n_ctx.
    ids = tiny.to_tokens(long_text)
    assert ids.shape[1] > 2 * tiny.cfg["n_ctx"] - 1
    assert len(tiny.to_str_tokens(long_text)) == ids.shape[1]
    assert tiny.to_tokens(long_text, truncate=True).shape == (1, tiny.cfg["n_ctx"])
    with pytest.raises(gb.GlassboxError, match="truncate=True"):
        tiny.run_with_cache(ids)
    assert tiny.run_with_cache(long_text, names_filter=[], truncate=True)[0].shape[1] == tiny.cfg["n_ctx"]
    with pytest.raises(gb.GlassboxError, match="no-such-model"):
        gb.Model.load(str(tmp_path / "no-such-model"))
    with pytest.raises(gb.GlassboxError, match="device"):
        gb.Model.load("smollm2", device="tpu")
    # The interpreter and the model are still fine.
    assert smollm2.run_with_cache(PROMPT, names_filter=[])[0].shape[0] == 1
