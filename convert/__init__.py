"""Qwen2 / Qwen2.5 / Qwen3 -> Jet-Nemotron: layer maps, weight conversion, distillation, model cards, upload.

Command line: `jet-nemotron {convert,distill,push,demo,card}` (see `convert/cli.py`, or `--help`).
"""

from .layer_map import LayerMap, PRESETS, resolve_layer_map
from .qwen_to_jet import build_jet_config, convert_model, convert_state_dict

__all__ = ["LayerMap", "PRESETS", "resolve_layer_map", "build_jet_config", "convert_model", "convert_state_dict"]
