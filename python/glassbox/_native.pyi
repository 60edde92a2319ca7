"""Type stubs of the Rust extension (see src/*.rs for the implementations)."""

from os import PathLike
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

class GlassboxError(Exception):
    """An error of the Glassbox library; the message says what and where."""

Input = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], npt.NDArray[np.integer]]
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]
HookFn = Callable[[npt.NDArray[np.float32], "Hook"], Optional[npt.NDArray[np.floating]]]

class Hook:
    """The hook point a hook function is called at."""

    name: str
    def layer(self) -> Optional[int]: ...

class Model:
    @staticmethod
    def load(name: Union[str, PathLike[str]], device: str = "cpu") -> "Model":
        """A packaged name (`minilm`, `smollm2`, …), a model directory or a GGUF file."""
    @property
    def cfg(self) -> dict[str, Any]:
        """n_layers, d_model, n_heads, n_key_value_heads, d_head, d_mlp, d_vocab, n_ctx, …"""
    @property
    def hook_names(self) -> list[str]: ...
    @property
    def chat_template(self) -> Optional[str]: ...
    @property
    def path(self) -> Path:
        """What the model was loaded from: a directory or a GGUF file."""
    def to_tokens(self, text: str, truncate: bool = False) -> npt.NDArray[np.int64]:
        """`[1, pos]` token ids, special tokens included: every token of a text longer than the
        context (to read in windows; running it whole is refused), its first `n_ctx` with
        `truncate`."""
    def to_str_tokens(self, text: str, truncate: bool = False) -> list[str]: ...
    def to_string(self, tokens: Input) -> str: ...
    def run_with_cache(
        self, input: Input, names_filter: NamesFilter = None, truncate: bool = False
    ) -> tuple[npt.NDArray[np.float32], dict[str, npt.NDArray[np.float32]]]:
        """`(logits, cache)`; for encoders the first item is the last hidden state. The arrays
        are read-only views of the library's memory (no copy): `.copy()` one to edit it."""
    def read_whole(
        self,
        text: str,
        hooks: NamesFilter,
        pass_tokens: int | None = None,
        truncate: bool = False,
    ) -> dict[str, npt.NDArray[np.float32]]:
        """`[tokens, width]` activations over the text's own tokens (no special tokens), read
        whole in overlapping passes as the `glassbox probe` commands read it, or its first pass
        with `truncate`."""
    def sentence_embeddings(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """`[texts, d_model]`: the last hidden state mean-pooled and unit length (MiniLM's
        sentence embedding); a text longer than the context is read by its first `n_ctx` tokens."""
    def run_with_hooks(
        self,
        input: Input,
        fwd_hooks: Sequence[tuple[str, HookFn]],
        truncate: bool = False,
    ) -> npt.NDArray[np.float32]:
        """Functions at the same point run in the order given, each on the previous result;
        each receives a writable copy it may edit in place. Returns the logits (read-only)."""
    def generate(
        self,
        prompt: Union[str, Sequence[dict[str, str]]],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        truncate: bool = False,
    ) -> str: ...
    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str: ...

class Sae:
    @staticmethod
    def load(path: Union[str, PathLike[str]]) -> "Sae": ...
    @staticmethod
    def train(
        acts: Union[str, PathLike[str], npt.ArrayLike],
        out: Union[str, PathLike[str]],
        *,
        k: Union[int, Sequence[int], None] = None,
        arch: str = "topk",
        width: int = 16384,
        batch: int = 4096,
        steps: Optional[int] = None,
        lr: float = 2e-3,
        warmup: int = 50,
        aux_k: Optional[int] = None,
        dead_after: int = 1_000_000,
        l1: float = 5.0,
        l0: float = 1.0,
        bandwidth: float = 0.05,
        checkpoint_every: int = 100,
        seed: int = 0,
        targets: Optional[npt.ArrayLike] = None,
        model: str = "array",
        hook: str = "array",
        target_hook: Optional[str] = None,
        progress: Union[bool, None, Callable[[int, int, dict[str, float]], Optional[bool]]] = None,
    ) -> Any:
        """Trains on a harvested store (a path) or an `[n, d_in]` array into `out`, as
        `glassbox train-dict` does: one `Sae` for an int `k`, a list for a list of k (one
        directory `out/k<K>` each). Resumes from checkpoints in `out`; Ctrl-C or a `progress`
        callback returning True stops at a checkpoint (KeyboardInterrupt)."""
    def save(self, path: Union[str, PathLike[str]]) -> None: ...
    @property
    def d_in(self) -> int: ...
    @property
    def d_sae(self) -> int: ...
    @property
    def hook_name(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def W_enc(self) -> npt.NDArray[np.float32]: ...
    @property
    def W_dec(self) -> npt.NDArray[np.float32]: ...
    @property
    def b_enc(self) -> npt.NDArray[np.float32]: ...
    @property
    def b_dec(self) -> npt.NDArray[np.float32]: ...
    def encode(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """`[n, d_in]` → dense `[n, d_sae]` feature activations."""
    def decode(self, f: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """`[n, d_sae]` → `[n, d_in]`."""

class SentenceProbe:
    """A probe on sentences read alone (`glassbox probe families --segments --out`): each text
    scores its highest logit over the probe's heads, its whole and each sentence (less
    `piece_scale`·ln(pieces) where the probe has one), as `glassbox probe score` and the served
    rule `sentences NAME > threshold` read it."""
    @staticmethod
    def load(path: Union[str, PathLike[str]]) -> "SentenceProbe": ...
    def pieces(self, model: Model, text: str) -> list[str]:
        """The pieces it reads `text` as: the whole, then each sentence where there are two or
        more; without the whole of a text `model` cuts to its context where `whole_only_if_fits`."""
    def piece_logits(self, model: Model, text: str) -> npt.NDArray[np.float32]: ...
    def piece_kinds(self, model: Model, text: str) -> list[str]:
        """The head (kind of attack) that scores each piece highest, in `pieces(model, text)`'s
        order."""
    @property
    def whole_only_if_fits(self) -> bool: ...
    @property
    def piece_scale(self) -> Optional[float]:
        """Its discount by piece count (`--discount-pieces`): a text scores its highest piece
        logit less `piece_scale`·ln(pieces); `None` for the plain highest."""
    def score(self, model: Model, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...
    @property
    def heads(self) -> dict[str, tuple[npt.NDArray[np.float32], float]]:
        """kind → `(weights, bias)`: a piece's logit is `weights @ e + bias` for its sentence
        embedding `e` (`Model.sentence_embeddings`)."""
    @property
    def name(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def kinds(self) -> list[str]: ...
    @property
    def threshold(self) -> Optional[float]: ...
    @property
    def penalty(self) -> Optional[float]:
        """The heads' L2 penalty (standardised inputs) it was trained at; None: 0.5."""

class Catalog:
    @staticmethod
    def open(path: Union[str, PathLike[str]], store: Optional[str] = None) -> "Catalog": ...
    def meta_json(self) -> str: ...
    def summaries_json(self) -> str: ...
    def feature_json(self, id: int) -> Optional[str]: ...
    def search(self, query: str, limit: int) -> list[tuple[int, float]]: ...
    def flagged(self, concept: str, limit: int) -> list[tuple[int, float]]: ...
    def on_token(self, token: str, limit: int) -> list[tuple[int, int]]: ...

TextOrIds = Union[str, Sequence[int]]

def patch(model: Model, clean: TextOrIds, corrupt: TextOrIds, *, target: Optional[str] = None,
          minus: Optional[str] = None, reverse: bool = False, attribution: bool = False) -> str:
    """The patching report as JSON (see `glassbox.analysis.patch`)."""
def logit_lens_table(model: Model, text: TextOrIds, *, k: int = 3, target: Optional[str] = None) -> str:
    """The logit lens table as JSON (see `glassbox.analysis.logit_lens`)."""
def dla(model: Model, text: TextOrIds, *, target: Optional[str] = None, minus: Optional[str] = None,
        position: Optional[int] = None) -> str:
    """Direct logit attribution as JSON (see `glassbox.analysis.dla`)."""
def graph(model: Model, text: TextOrIds, saes: list[Sae], *, target: Optional[str] = None,
          minus: Optional[str] = None, probe: Optional[str] = None, position: Optional[int] = None,
          nodes_per_layer: int = 12, edge_threshold: float = 0.02) -> str:
    """An attribution graph as JSON (see `glassbox.analysis.attribution_graph`)."""
