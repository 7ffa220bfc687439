"""What differs between the transformers releases we support (5.17 .. newest), decided once, by feature.

transformers 5.24 renamed the cache argument everywhere: `generate()` hands the model `cache=`, mask builders take
`cache=`, outputs carry `.cache`, and gradient checkpointing clears the kwarg named `cache`. Before 5.24 all of
these were `past_key_values`. A model that reads only one name gets no cache from the other releases' `generate()`
(and silently recomputes from scratch each step: wrong tokens, no error), so the model accepts both names and
speaks each release's own. Features are probed, not version numbers, so a backport or a patch release is handled.
"""

from __future__ import annotations

import inspect

from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

# the keyword under which this transformers passes, returns and checkpoints the cache
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# the keyword of the cache in transformers' mask builders (create_causal_mask and its siblings)
MASK_CACHE_NAME = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def pick_cache(cache, past_key_values):
    """The one cache of a call that may name it either way; both at once is a caller's mistake."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the cache once: as `cache` (transformers >= 5.24) or `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def checkpointing_enable(model, **checkpoint_kwargs) -> None:
    """Gradient (activation) checkpointing on, `checkpoint_kwargs` going to torch.utils.checkpoint (e.g.
    use_reentrant=False): transformers 5.24 renamed `gradient_checkpointing_enable(gradient_checkpointing_kwargs=)`
    to `activation_checkpointing_enable(activation_checkpointing_kwargs=)` and deprecated the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)


def checkpointing_disable(model) -> None:
    """The counterpart of `checkpointing_enable`."""
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
