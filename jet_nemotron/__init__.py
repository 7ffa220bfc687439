"""Jet-Nemotron for transformers 5.x: `JetNemotronConfig`, `JetNemotronForCausalLM` and the hybrid cache."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_jet_nemotron import (
    JetNemotronCache,
    JetNemotronStaticCache,
    cache_nbytes_estimate,
    cache_nbytes_per_layer_type,
)
from .configuration_jet_nemotron import JetNemotronConfig
from .modeling_jet_nemotron import JetNemotronForCausalLM, JetNemotronModel, JetNemotronPreTrainedModel
from .transformers_compat import CACHE_NAME

AutoConfig.register(JetNemotronConfig.model_type, JetNemotronConfig, exist_ok=True)
AutoModel.register(JetNemotronConfig, JetNemotronModel, exist_ok=True)
AutoModelForCausalLM.register(JetNemotronConfig, JetNemotronForCausalLM, exist_ok=True)
# save_pretrained then writes `auto_map` and copies the (flat) modeling files next to the weights
JetNemotronConfig.register_for_auto_class()
JetNemotronModel.register_for_auto_class("AutoModel")
JetNemotronForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__version__ = "0.1.0"
__all__ = [
    "JetNemotronConfig",
    "JetNemotronModel",
    "JetNemotronForCausalLM",
    "JetNemotronPreTrainedModel",
    "JetNemotronCache",
    "JetNemotronStaticCache",
    "cache_nbytes_per_layer_type",
    "cache_nbytes_estimate",
    "CACHE_NAME",
]
