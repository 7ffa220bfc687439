"""Acceptance 6: bad input gets a clear error naming the field, tensor or layer index."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_config, tiny_model
from jet_nemotron import JetNemotronConfig, JetNemotronForCausalLM


def test_unknown_layer_type_names_index_and_allowed_values():
    with pytest.raises(ValueError, match=r"layer_types\[2\] = 'mamba2'.*allowed"):
        tiny_config(layer_types=("jet", "attn", "mamba2", "jet"))


def test_layer_list_of_the_wrong_length():
    with pytest.raises(ValueError, match="layer_types has 3 entries but num_hidden_layers is 5"):
        JetNemotronConfig(num_hidden_layers=5, layer_types=["jet", "attn", "jet"])


def test_sliding_layer_without_a_window():
    with pytest.raises(ValueError, match=r"layer 1 is a sliding-window layer.*window_size"):
        JetNemotronConfig(num_hidden_layers=2, layer_types=["jet", "swa"], efficient_attention_config={"jet": {}})


def test_fractional_value_head():
    eac = {"jet": {"num_heads": 2, "head_dim": 10, "expand_v": 2.55}}
    with pytest.raises(ValueError, match=r"head_dim 10 \* expand_v 2.55 .* not a whole value-head dimension"):
        JetNemotronConfig(num_hidden_layers=1, layer_types=["jet"], efficient_attention_config=eac)


def test_layer_types_as_official_string_and_hf_names_round_trip(tmp_path):
    a = JetNemotronConfig(num_hidden_layers=3, layer_types="jet,attn,swa")
    b = JetNemotronConfig(num_hidden_layers=3, layer_types=["linear_attention", "full_attention", "sliding_attention"])
    assert a.layer_types == b.layer_types and a.official_layer_types == ["jet", "attn", "swa"]
    a.save_pretrained(tmp_path)
    assert JetNemotronConfig.from_pretrained(tmp_path).layer_types == a.layer_types


def _saved(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    return load_file(tmp_path / "model.safetensors")


def test_checkpoint_missing_a_jetblock_tensor(tmp_path):
    state = _saved(tmp_path)
    del state["model.layers.3.self_attn.dynamic_conv1d.kernel_generator.w1.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.3\.self_attn\.dynamic_conv1d\.kernel_generator\.w1\.weight"):
        JetNemotronForCausalLM.from_pretrained(tmp_path)


def test_checkpoint_with_a_misshaped_jetblock_tensor(tmp_path):
    state = _saved(tmp_path)
    state["model.layers.0.self_attn.A_log"] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Exception, match=r"model\.layers\.0\.self_attn\.A_log"):
        JetNemotronForCausalLM.from_pretrained(tmp_path)


def test_forced_triton_backend_on_cpu_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_model(kernel_backend="triton")
    with pytest.raises(RuntimeError, match="triton"):
        model(torch.randint(3, 128, (1, 5)))
