"""PostNAS placement search (convert/search/) on a teacher whose retrieval lives in one known layer.

The teacher is a tiny Qwen2 built by hand (`retrieval_teacher`): every layer but `RETRIEVAL_LAYER` mixes tokens
with random attention and random MLPs that write only to a "noise" subspace of the residual stream (that is what
the lm text's predictions read), while layer `RETRIEVAL_LAYER` holds one attention head that looks a key up among
24 key-value pairs and writes the value into an "answer" subspace that only the value tokens' logits read. On
plain text that head attends to a sink at position 0 whose value is zero, so it contributes nothing there.
So restoring attention at RETRIEVAL_LAYER must be what the search prefers for retrieval, and not for lm.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

RETRIEVAL_LAYER = 2
N_LAYERS = 4
N_KEYS, N_VALS, N_FILL, N_PAIRS = 32, 16, 64, 24
D, HEAD = 96, 32
SK, SQ, SV, SA, BOS_DIM, NOISE = slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64), 64, slice(65, 96)
# token ids
BOS = 0
QUERY0 = 1  # query token of key a: QUERY0 + a
VALUE0 = QUERY0 + N_KEYS  # value token b: VALUE0 + b
FILL0 = VALUE0 + N_VALS
PAIR0 = FILL0 + N_FILL  # pair token (a, b): PAIR0 + a * N_VALS + b
VOCAB = PAIR0 + N_KEYS * N_VALS


def slow_dims(head_dim: int, n: int) -> list[int]:
    """The n rotate-half RoPE dims that rotate slowest (pairs i, i + head_dim/2 with the largest i)."""
    half, out = head_dim // 2, []
    for i in reversed(range(half)):
        out += [i, i + half]
    return out[:n]


@torch.no_grad()
def retrieval_teacher(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    g = torch.Generator().manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=N_LAYERS,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=HEAD, max_position_embeddings=512,
                      tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e8},
                      rms_norm_eps=1e-6, bos_token_id=BOS, eos_token_id=BOS, pad_token_id=BOS)
    model = Qwen2ForCausalLM(cfg).eval()
    for p in model.parameters():
        p.zero_()
    codes = torch.randn(N_KEYS, 15, generator=g)
    codes = codes / codes.norm(dim=1, keepdim=True)
    emb = model.model.embed_tokens.weight
    emb[BOS, BOS_DIM] = 1.0
    emb[QUERY0: QUERY0 + N_KEYS, SQ.start: SQ.start + 15] = codes
    pairs = torch.arange(N_KEYS * N_VALS)
    emb[PAIR0 + pairs, SK.start: SK.start + 15] = codes.repeat_interleave(N_VALS, 0)
    emb[PAIR0 + pairs, SV.start + pairs % N_VALS] = 1.0
    n_noise = NOISE.stop - NOISE.start
    emb[VALUE0: FILL0 + N_FILL, NOISE] = torch.randn(N_VALS + N_FILL, n_noise, generator=g) / math.sqrt(n_noise) * 2
    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        att = layer.self_attn
        if i == RETRIEVAL_LAYER:
            dims = slow_dims(HEAD, 16)
            for m in range(15):  # head 0 only; head 1 stays all zero
                att.q_proj.weight[dims[m], SQ.start + m] = 4.0
                att.k_proj.weight[dims[m], SK.start + m] = 4.0
            att.q_proj.bias[dims[15]] = 4.0  # every query also asks for the sink ...
            att.k_proj.weight[dims[15], BOS_DIM] = 3.0  # ... which only BOS answers
            for m in range(N_VALS):
                att.v_proj.weight[m, SV.start + m] = 1.0
                att.o_proj.weight[SA.start + m, m] = 3.0
            continue
        # a random mixer and MLP that read everything and write only the noise subspace
        att.q_proj.weight.copy_(torch.randn(att.q_proj.weight.shape, generator=g) * 0.4)
        att.k_proj.weight.copy_(torch.randn(att.k_proj.weight.shape, generator=g) * 0.4)
        att.v_proj.weight.copy_(torch.randn(att.v_proj.weight.shape, generator=g) * 0.1)
        att.o_proj.weight[NOISE] = torch.randn(n_noise, att.o_proj.weight.shape[1], generator=g) * 0.02
        mlp = layer.mlp
        mlp.gate_proj.weight.copy_(torch.randn(mlp.gate_proj.weight.shape, generator=g) * 0.1)
        mlp.up_proj.weight.copy_(torch.randn(mlp.up_proj.weight.shape, generator=g) * 0.1)
        mlp.down_proj.weight[NOISE] = torch.randn(n_noise, mlp.down_proj.weight.shape[1], generator=g) * 0.03
    model.model.norm.weight.fill_(1.0)
    head = model.lm_head.weight
    for b in range(N_VALS):
        head[VALUE0 + b, SA.start + b] = 1.0
    others = [t for t in range(VOCAB) if not VALUE0 <= t < VALUE0 + N_VALS]
    head[others, NOISE] = torch.randn(len(others), n_noise, generator=g) * 0.5
    return model


def retrieval_items(n: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    prompts, answers = [], []
    for _ in range(n):
        keys = rng.sample(range(N_KEYS), N_PAIRS)
        vals = [rng.randrange(N_VALS) for _ in keys]
        ask = rng.randrange(N_PAIRS)
        prompts.append([BOS] + [PAIR0 + a * N_VALS + b for a, b in zip(keys, vals)] + [QUERY0 + keys[ask]])
        answers.append([VALUE0 + vals[ask]])
    return prompts, answers


def filler_rows(n: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return FILL0 + torch.randint(0, N_FILL, (n, length), generator=g)


def training_rows(n: int, length: int, seed: int) -> torch.Tensor:
    """Half retrieval documents (prompt + answer, then filler), half plain filler."""
    rows = filler_rows(n, length, seed)
    prompts, answers = retrieval_items(n // 2, seed + 1)
    for r, (p, a) in enumerate(zip(prompts, answers)):
        doc = p + a
        rows[2 * r, : len(doc)] = torch.tensor(doc)
    return rows


@pytest.fixture(scope="module")
def trained_supernet():
    from convert.search.supernet import Supernet
    from convert.search.train import SupernetConfig, train_supernet

    torch.manual_seed(0)
    teacher = retrieval_teacher()
    net = Supernet.from_source(teacher)
    cfg = SupernetConfig(steps=3, batch_size=4, micro_batch=4, attn=1, lr=3e-3, warmup_steps=1, save_every=0)
    summary = train_supernet(net, training_rows(16, 32, 7), cfg, log=lambda *a: None)
    return teacher, net, summary


@pytest.fixture(scope="module")
def scorer(trained_supernet):
    """One memo of scores for every search below (scores do not depend on the objective weights)."""
    from convert.search.objectives import AnswerSet, LMSet
    from convert.search.placement import Scorer

    prompts, answers = retrieval_items(10, 99)
    sets = {"retrieval": AnswerSet("retrieval", prompts, answers), "lm": LMSet("lm", filler_rows(4, 32, 123))}
    return Scorer(trained_supernet[1], sets, "cpu")


def test_supernet_all_attention_is_the_source(trained_supernet):
    teacher, net, _ = trained_supernet
    x = training_rows(2, 32, 3)
    net.set_placement(["attn"] * N_LAYERS)
    with torch.no_grad():
        h, _ = net.hidden(x)
        ref = teacher(input_ids=x).logits
    torch.testing.assert_close(h @ net.head.t(), ref, rtol=1e-5, atol=1e-5)


def test_supernet_training_moves_only_jetblocks(trained_supernet):
    teacher, net, summary = trained_supernet
    hist = summary["history"]
    assert len(hist) == 3 and all(math.isfinite(h["loss"]) for h in hist)
    assert all(len(h["attn"]) == 1 for h in hist)  # exactly K = 1 attention layer per sampled sub-network
    frozen = {n: p for n, p in net.named_parameters() if ".jet." not in n}
    assert frozen and not any(p.requires_grad for p in frozen.values())
    ref = dict(teacher.named_parameters())
    q = "model.model.layers.0.self_attn.attn.q_proj.weight"
    assert torch.equal(frozen[q], ref["model.layers.0.self_attn.q_proj.weight"])
    # the output gates start at zero (converter init) and must have opened
    assert any(m.jet.g_proj.weight.abs().sum() > 0 for m in net.mixers)


def test_search_ranks_the_retrieval_layer_first_for_retrieval_and_not_for_lm(trained_supernet, scorer):
    from convert.search.run import search_supernet

    _, net, _ = trained_supernet
    sets = scorer.sets
    ret, _ = search_supernet(net, sets, {"retrieval": 1.0}, 1, 0, 2, "beam", "cpu", progress=False, scorer=scorer)
    ends = ret["endpoints"]
    # the construction works: the source retrieves, the all-JetBlock sub-network does not
    assert ends["source"]["retrieval"]["exact"] >= 0.9 and ends["all_jet"]["retrieval"]["exact"] <= 0.3
    single = ret["single"]["attn"]
    order = [single["layers"][i] for i in sorted(range(len(single["layers"])), key=lambda i: single["retrieval"][i])]
    assert order[0] == RETRIEVAL_LAYER, single
    assert ret["placement"][RETRIEVAL_LAYER] == "attn"
    # restoring the retrieval layer closes most of the retrieval gap, restoring any other closes little
    assert single["retrieval"][single["layers"].index(RETRIEVAL_LAYER)] < 0.3
    assert min(s for i, s in zip(single["layers"], single["retrieval"]) if i != RETRIEVAL_LAYER) > 0.7

    lm, _ = search_supernet(net, sets, {"lm": 1.0}, 1, 0, 2, "beam", "cpu", progress=False, scorer=scorer)
    s_lm = lm["single"]["attn"]
    best_lm = s_lm["layers"][min(range(len(s_lm["lm"])), key=lambda i: s_lm["lm"][i])]
    assert best_lm != RETRIEVAL_LAYER and lm["placement"][RETRIEVAL_LAYER] == "jet", s_lm

    kl, _ = search_supernet(net, sets, {"retrieval": 1.0, "lm": 0.0}, 1, 0, 2, "kl-guided", "cpu", progress=False,
                            scorer=scorer)
    assert kl["placement"][RETRIEVAL_LAYER] == "attn"
    assert scorer.evaluations == 2 + N_LAYERS  # the ends and one restored layer each: shared by all three searches


def test_beam_search_places_windows_after_attention(trained_supernet, scorer):
    from convert.search.run import search_supernet

    _, net, _ = trained_supernet
    net.window = 8
    for m in net.mixers:
        m.window = 8
    try:
        res, _ = search_supernet(net, scorer.sets, {"retrieval": 1.0, "lm": 1.0}, 1, 1, 2, "beam", "cpu",
                                 progress=False, scorer=scorer)
    finally:
        net.window = None
        for m in net.mixers:
            m.window = None
    p = res["placement"]
    assert p.count("attn") == 1 and p.count("swa") == 1
    # the retrieval prompt (26 tokens) is longer than the window: a window at the retrieval layer cannot look up
    assert p[RETRIEVAL_LAYER] == "attn"
    assert "swa" in res["single"] and RETRIEVAL_LAYER not in res["single"]["swa"]["layers"]
    # memoised: every distinct placement is scored once
    assert scorer.evaluations == len({tuple(r["placement"]) for r in scorer.log})


def test_a_placement_computes_what_the_converted_model_computes(trained_supernet):
    """Switching flags gives the model `convert` would build for that map (fresh JetBlocks: the converter's init)."""
    from convert.layer_map import LayerMap
    from convert.qwen_to_jet import convert_model
    from convert.search.supernet import Supernet

    teacher = trained_supernet[0]
    types = ["jet", "swa", "attn", "swa"]  # one JetBlock first: the init draws the same random numbers in both
    net = Supernet.from_source(teacher, window=8)
    net.set_placement(types)
    ref = convert_model(teacher, LayerMap(types, swa={"window_size": 8})).eval()
    x = training_rows(2, 32, 5)  # longer than the window
    with torch.no_grad():
        h, _ = net.hidden(x)
        torch.testing.assert_close(h @ net.head.t(), ref(input_ids=x).logits, rtol=1e-5, atol=1e-5)
        net.set_placement(["jet", "attn", "attn", "attn"])  # the window matters: without it the logits move
        assert (net.hidden(x)[0] @ net.head.t() - ref(input_ids=x).logits).abs().max() > 1e-3
