"""The PostNAS once-for-all super-network: every layer holds its frozen source attention and a trainable JetBlock.

Built from a source Qwen (`Supernet.from_source`):
    the source is converted with the identity map (`all-attn`, `qwen_to_jet.convert_model`), so every layer's
    `self_attn` is the source attention, unchanged and frozen, as are the MLPs, norms and embeddings; each layer's
    `self_attn` is then wrapped in a `SuperMixer` that also holds a JetBlock initialised from that attention
    exactly as the converter initialises one (`qwen_to_jet.init_jet_block`).
Switching sub-networks is a per-layer flag (`SuperMixer.mode`: "attn", "swa" or "jet"), nothing is rebuilt:
`set_placement(["jet", "attn", ...])` costs a Python loop over the layers. With every layer on "attn" the supernet
is the source model itself (same weights, same ops), so it is also the distillation teacher: no second copy.

Rows are never padded here (packed text, or right-padded prompts whose padding only follows the positions that
are read), so no attention mask is passed: full attention runs causal sdpa, "swa" the same attention module with
its window set (banded when the row is longer than the window), "jet" the JetBlock without a mask.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layer_map import LayerMap
from ..qwen_to_jet import SourceDims, attention_names, build_jet_config, convert_model, init_jet_block

MODES = ("jet", "attn", "swa")


class SuperMixer(nn.Module):
    """One layer's two token mixers; `mode` chooses which one runs. Lives where `self_attn` was.

    forward(hidden_states [B, T, hidden], position_embeddings, ...) -> (out [B, T, hidden], None). When `capture`
    is set, the output is also kept in `last_out` (the distillation's feature targets and predictions).
    """

    def __init__(self, attn: nn.Module, jet: nn.Module, window: int | None):
        super().__init__()
        self.attn, self.jet, self.window = attn, jet, window
        self.mode = "attn"
        self.capture = False
        self.last_out: torch.Tensor | None = None

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        if past_key_values is not None:
            raise ValueError("the supernet runs whole sequences only (no cache)")
        if self.mode == "jet":
            out, _ = self.jet(hidden_states)
        else:
            # the window is an attribute of the attention module; "attn" clears it, "swa" sets it
            self.attn.sliding_window = self.window if self.mode == "swa" else None
            out, _ = self.attn(hidden_states, position_embeddings, None)
        if self.capture:
            self.last_out = out
        return out, None


class Supernet(nn.Module):
    """The source model with a `SuperMixer` in every layer. `model` is a JetNemotronForCausalLM (all "attn")."""

    def __init__(self, model, jet_config, window: int | None):
        super().__init__()
        self.model, self.jet_config, self.window = model, jet_config, window
        self.num_layers = model.config.num_hidden_layers

    @classmethod
    def from_source(cls, src_model, jet: dict | None = None, window: int | None = None, seed: int = 0,
                    dtype: torch.dtype | None = None) -> "Supernet":
        """Build from a loaded Qwen2 / Qwen3 model (CPU). `jet`: JetBlock sizes (None entries: the converter's
        defaults from the source); `window`: the sliding window of "swa" layers (None: no "swa" allowed).
        Frozen weights go to `dtype` (default: the source's); JetBlock weights stay fp32 (they train)."""
        from jet_nemotron.jet_block import JetBlock

        src = SourceDims.from_config(src_model.config)
        L = src.num_layers
        base = convert_model(src_model, LayerMap(["attn"] * L, source="supernet (all-attn)"))
        if dtype is not None:
            base.to(dtype)
        base.config._attn_implementation = "sdpa"  # causal sdpa with no mask; eager would need one
        base.requires_grad_(False).eval()
        jet_cfg = build_jet_config(src_model.config, LayerMap(["jet"] * L, source="supernet JetBlocks"), jet)
        dims = jet_cfg.jet_dims()
        gen = torch.Generator().manual_seed(seed)
        sd = src_model.state_dict()
        for i, layer in enumerate(base.model.layers):
            attn = {n: sd[f"model.layers.{i}.self_attn.{n}"].float() for n in attention_names(src)}
            with torch.device("meta"):
                block = JetBlock(jet_cfg, i)
            block.load_state_dict(init_jet_block(attn, src, dims, "attention", gen), assign=True)
            block.float().requires_grad_(True)
            layer.self_attn = SuperMixer(layer.self_attn, block, window)
        return cls(base, jet_cfg, window)

    # ------------------------------------------------------------------------------------------ placements
    @property
    def mixers(self) -> list[SuperMixer]:
        return [layer.self_attn for layer in self.model.model.layers]

    def set_placement(self, types) -> None:
        """Choose the mixer of every layer: a list of "jet" / "attn" / "swa" (or a `LayerMap`)."""
        types = list(types.layer_types if isinstance(types, LayerMap) else types)
        if len(types) != self.num_layers:
            raise ValueError(f"placement has {len(types)} entries, the supernet {self.num_layers} layers")
        for i, (mixer, t) in enumerate(zip(self.mixers, types)):
            if t not in MODES:
                raise ValueError(f"placement layer {i}: unknown mode {t!r}; allowed {list(MODES)}")
            if t == "swa" and not self.window:
                raise ValueError(f"placement layer {i} is 'swa' but the supernet has no sliding window (--window)")
            mixer.mode = t

    def placement(self) -> list[str]:
        return [m.mode for m in self.mixers]

    def jet_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.mixers for p in m.jet.parameters()]

    def jet_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable part only (what a checkpoint needs): `{layer}.{name}` -> tensor."""
        return {f"{i}.{n}": t for i, m in enumerate(self.mixers) for n, t in m.jet.state_dict().items()}

    def load_jet_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for i, m in enumerate(self.mixers):
            m.jet.load_state_dict({n.split(".", 1)[1]: t for n, t in sd.items() if n.split(".", 1)[0] == str(i)})

    # ------------------------------------------------------------------------------------------ forward
    @property
    def head(self) -> torch.Tensor:
        """The output head [V, d] (frozen)."""
        return self.model.lm_head.weight

    def hidden(self, input_ids: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list | None]:
        """Final normed hidden states [B, T, d] under the current placement; with `capture`, also every layer's
        mixer output [B, T, d] (list, layer order)."""
        for m in self.mixers:
            m.capture, m.last_out = capture, None
        try:
            h = self.model.model(input_ids=input_ids, use_cache=False).last_hidden_state
            outs = [m.last_out for m in self.mixers] if capture else None
        finally:
            for m in self.mixers:
                m.capture, m.last_out = False, None
        return h, outs
