"""Sequence-mixing ops, each as a naive spec (`naive.py`) and a fast twin with the same signature."""
