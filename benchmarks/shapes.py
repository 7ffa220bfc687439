"""The Qwen2.5-1.5B shape (Jet-Nemotron-2B's base, `../shared/REFERENCE.md`), for benchmarks that run random weights
of the real size. Two of them differ on one field, on purpose: the official 2B ties its embeddings, while the
Qwen2.5-Coder-1.5B-Instruct GGUF we distil from loads untied (transformers reads its separate output matrix)."""

QWEN25_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2)
