"""`jet-nemotron eval`: the numbers a user decides by, for a model and its baseline side by side.

One file per suite: `perplexity`, `retrieval` (passkey, needle grid, multi-needle, key-value, variable tracking),
`humaneval`, `lm_harness` (lm-evaluation-harness over local task YAML), `speed`; `models` loads a model and checks
a baseline against it, `generation` is the batched greedy decoding they share, `report` writes JSON, markdown and
PNGs, and `suite` runs the parts asked for.
"""

SUITES = ("ppl", "niah", "humaneval", "speed", "lm-eval")
