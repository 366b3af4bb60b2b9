"""Ternary weights: quantizers, BitLinear (QAT), packing formats, packed linear."""
