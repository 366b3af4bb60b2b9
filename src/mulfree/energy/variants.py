"""The energy report's variants (kept apart from `report` so the CLI can list them cheaply)."""

# fp32 / bf16: the model as it is or in bfloat16; lmul-attn / lmul-all: L-Mul in attention or in
# every float product; ternary: packed ternary weights; mulfree: ternary + L-Mul elsewhere.
ALL_VARIANTS = ("fp32", "bf16", "lmul-attn", "lmul-all", "ternary", "mulfree")
