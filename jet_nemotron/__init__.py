"""Jet-Nemotron for transformers 5.x: `JetNemotronConfig`, `JetNemotronForCausalLM` and the hybrid cache.

Map of the repository (data flows one way: convert/ and benchmarks/ import jet_nemotron, never back):

jet_nemotron/  the model; flat, because save_pretrained copies it next to the weights for trust_remote_code
  configuration_jet_nemotron.py  the config, and every Jet-Nemotron constant: layer-type names (official
                                 "jet"/"attn"/"swa" <-> transformers'), the official 2B/4B releases, defaults
  modeling_jet_nemotron.py      decoder layers, attention (full / sliding), masks, the CausalLM and generate glue
  jet_block.py                  the JetBlock (projections, dynamic conv, gated delta rule, gated norm), decay init
  cache_jet_nemotron.py         the hybrid cache (dynamic and static), bytes per layer kind
  transformers_compat.py        what differs between the transformers releases supported
  fused_projections.py          same-input projections as one product: fused for inference, concatenated in training
  ops.py                        the one dispatch point of the sequence ops: Triton on CUDA, else the reference
  *_ref.py                      PyTorch references (exact, any device): gated delta rule, dynamic conv, gated norm;
                                 training's RMSNorm and SwiGLU, and a frozen teacher's rotary embedding
  *_triton.py                   the Triton kernels, same signatures; the gated delta rule is split by family:
    gated_delta_rule_triton.py  entry points + autograd  | _chunk_fwd / _chunk_bwd  chunked forward / backward
    _recurrent / _step          token loop / decode step | _launch / _tiles  launch tuning / shared tile helpers
convert/       the `jet-nemotron` tool (convert/README.md)
  cli.py (commands) -> pipeline.py (convert end to end) -> layer_map.py (which layer becomes what),
  qwen_to_jet.py (weights: name map + JetBlock init), distill.py + kl.py + data.py (distillation),
  evaluation.py (perplexity, passkey), export.py / model_card.py / push.py (output folder, card, Hub),
  demo.py + tiny_teacher.py (offline end-to-end demo)
examples/      generate, evaluate and LoRA fine-tuning scripts
benchmarks/    GPU measurements (kernels, generation, distillation); results/ holds one current, stamped file each,
               KERNEL_NOTES.md says what holds now and why; gpu_session.sh runs them
modeling_tests/ pytest, CPU (kernels on Triton's interpreter); GPU-only tests skip without CUDA
"""

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
