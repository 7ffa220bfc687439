"""Layer maps: which layer of the source model becomes a JetBlock, keeps full attention, or slides a window.

A `LayerMap` comes from one of three places, all resolved by `resolve_layer_map`:

1. A preset: `jet-nemotron-2b` (28 layers, Qwen2.5-1.5B) or `jet-nemotron-4b` (36 layers, Qwen2.5-3B), the
   official release's maps and JetBlock sizes.
2. A JSON file, the format the PostNAS search writes (`LAYER_MAP_FORMAT`):

       {
         "format": "jet-nemotron-layer-map/v1",
         "num_layers": 28,
         "layer_types": ["jet", "jet", ..., "attn", ..., "swa", ...],   # one per layer, official names
         "jet": {"num_heads": 12, "head_dim": 96, "expand_v": 2.6666666667,
                 "conv_size": 4, "dconv_generator_reduction": 8},         # optional: preset / flag sizes
         "swa": {"window_size": 1152},                                    # needed when any layer is "swa"
         "base_model": "Qwen/Qwen2.5-1.5B",                               # optional, informational
         "search": {"objective": "mmlu", "scores": {...}}                 # optional, kept in the model card
       }

   `layer_types` also accepts transformers' names ("linear_attention", "full_attention", "sliding_attention").
3. A short spec on the command line, either a run-length list or a placement list:
       "jet*14,attn,jet*4,attn,swa*2,jet*6"     (also j/a/s for short)
       "attn:14,19 swa:20,21"                   (every other layer is a JetBlock; ranges like 3-5 work)
   `all-attn` keeps every layer as full attention (the identity conversion) and `all-jet` replaces all.

Errors name the entry, the layer index and the allowed values; nothing here touches a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from jet_nemotron.configuration_jet_nemotron import (
    HF_TO_OFFICIAL_LAYER_TYPES,
    JET_CONFIG_KEYS,
    OFFICIAL_MODELS,
    OFFICIAL_TO_HF_LAYER_TYPES,
)

from .official_layout import OFFICIAL_JET_DEFAULTS

LAYER_MAP_FORMAT = "jet-nemotron-layer-map/v1"

# Official names are what we store; transformers' names and one-letter short forms are accepted.
LAYER_TYPES = tuple(OFFICIAL_TO_HF_LAYER_TYPES)
_ALIASES = {**{t: t for t in LAYER_TYPES}, **{t[0]: t for t in LAYER_TYPES}, **HF_TO_OFFICIAL_LAYER_TYPES}
# keys of the official JetBlock sizes that nothing of ours reads; accepted in a map so official configs pass through
_IGNORED_JET_KEYS = tuple(OFFICIAL_JET_DEFAULTS)

PRESETS: dict[str, dict] = OFFICIAL_MODELS


@dataclass
class LayerMap:
    """One entry of `LAYER_TYPES` per layer, plus the JetBlock / sliding-window sizes it was given (may be empty)."""

    layer_types: list[str]
    jet: dict = field(default_factory=dict)
    swa: dict = field(default_factory=dict)
    source: str = "spec"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.layer_types = [_canonical(t, i, self.source) for i, t in enumerate(self.layer_types)]
        unknown = sorted(set(self.jet) - set(JET_CONFIG_KEYS) - set(_IGNORED_JET_KEYS))
        if unknown:
            raise ValueError(f"layer map {self.source}: unknown JetBlock size keys {unknown}; allowed: "
                             f"{list(JET_CONFIG_KEYS)}")
        if "window_size" in self.swa and int(self.swa["window_size"]) < 1:
            raise ValueError(f"layer map {self.source}: swa.window_size must be >= 1, got {self.swa['window_size']}")

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    def indices(self, kind: str) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == kind]

    def check_layer_count(self, num_layers: int, model_name: str = "the source model") -> None:
        if self.num_layers != num_layers:
            raise ValueError(f"layer map {self.source} has {self.num_layers} layers but {model_name} has "
                             f"{num_layers}; give one entry per layer")

    def describe(self) -> str:
        """Compact run-length form, e.g. 'jet*14,attn,jet*4,attn,swa*2,jet*6'."""
        parts, i = [], 0
        while i < self.num_layers:
            j = i
            while j < self.num_layers and self.layer_types[j] == self.layer_types[i]:
                j += 1
            parts.append(self.layer_types[i] + (f"*{j - i}" if j - i > 1 else ""))
            i = j
        return ",".join(parts)

    def to_json(self) -> dict:
        out = {"format": LAYER_MAP_FORMAT, "num_layers": self.num_layers, "layer_types": list(self.layer_types)}
        if self.jet:
            out["jet"] = dict(self.jet)
        if self.swa:
            out["swa"] = dict(self.swa)
        out.update({k: v for k, v in self.metadata.items() if k not in out})
        return out


def _canonical(name, index: int, source: str) -> str:
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"layer map {source}: layer {index} has unknown type {name!r}; allowed: "
                         f"{sorted(set(_ALIASES))}")
    return _ALIASES[key]


def _parse_indices(text: str, num_layers: int | None, source: str) -> list[int]:
    out = []
    for part in filter(None, text.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m:
            raise ValueError(f"layer map {source}: {part!r} is not a layer index or a range like 3-5")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"layer map {source}: empty range {part!r}")
        out.extend(range(lo, hi + 1))
    for i in out:
        if num_layers is not None and not 0 <= i < num_layers:
            raise ValueError(f"layer map {source}: layer index {i} is outside 0..{num_layers - 1}")
    return out


def parse_spec(spec: str, num_layers: int | None = None) -> LayerMap:
    """Parse a command-line spec (see the module docstring). `num_layers` is needed for placement specs."""
    text = spec.strip()
    source = f"spec {text!r}"
    if not text:
        raise ValueError("layer map spec is empty")
    if text in ("all-attn", "all-jet"):
        if num_layers is None:
            raise ValueError(f"layer map {source} needs the model's layer count")
        return LayerMap(["attn" if text == "all-attn" else "jet"] * num_layers, source=source)
    if ":" in text:
        if num_layers is None:
            raise ValueError(f"layer map {source}: a placement spec needs the model's layer count")
        types = ["jet"] * num_layers
        placed: dict[int, str] = {}
        for group in text.replace(";", " ").split():
            kind, _, idx = group.partition(":")
            kind = _canonical(kind, -1, source)
            for i in _parse_indices(idx, num_layers, source):
                if i in placed:  # a contradiction or a typo either way: refuse rather than let the last win
                    raise ValueError(f"layer map {source}: layer {i} is placed twice ({placed[i]} and {kind}); "
                                     "name each layer once")
                placed[i] = kind
                types[i] = kind
        return LayerMap(types, source=source)
    types = []
    for tok in filter(None, re.split(r"[,\s]+", text)):
        kind, _, count = tok.partition("*")
        if count and not count.isdigit():
            raise ValueError(f"layer map {source}: repeat count in {tok!r} is not a number")
        types.extend([_canonical(kind, len(types), source)] * (int(count) if count else 1))
    return LayerMap(types, source=source)


def load_json(path: str | Path) -> LayerMap:
    """Read a PostNAS layer-map JSON file (format in the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"layer map {path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or "layer_types" not in data:
        raise ValueError(f"layer map {path}: expected an object with 'layer_types' (format {LAYER_MAP_FORMAT})")
    fmt = data.get("format", LAYER_MAP_FORMAT)
    if fmt != LAYER_MAP_FORMAT:
        raise ValueError(f"layer map {path}: format {fmt!r} is not {LAYER_MAP_FORMAT!r}")
    types = data["layer_types"]
    if isinstance(types, str):
        types = [t for t in re.split(r"[,\s]+", types) if t]
    lm = LayerMap(list(types), dict(data.get("jet") or {}), dict(data.get("swa") or {}), source=str(path),
                  metadata={k: v for k, v in data.items()
                            if k not in ("format", "num_layers", "layer_types", "jet", "swa")})
    if "num_layers" in data and int(data["num_layers"]) != lm.num_layers:
        raise ValueError(f"layer map {path}: num_layers is {data['num_layers']} but layer_types has "
                         f"{lm.num_layers} entries")
    return lm


def resolve_layer_map(arg: str, num_layers: int | None = None) -> LayerMap:
    """A preset name, a path to a JSON file, or a spec string, in that order of precedence."""
    key = arg.strip().lower()
    if key in PRESETS:
        p = PRESETS[key]
        return LayerMap(list(p["layer_types"]), dict(p["jet"]), dict(p["swa"]), source=f"preset {key}",
                        metadata={"base_model": p["base_model"], "preset": key})
    if arg.endswith(".json") or Path(arg).is_file():
        if not Path(arg).is_file():
            raise FileNotFoundError(f"layer map file {arg} does not exist")
        return load_json(arg)
    return parse_spec(arg, num_layers)
