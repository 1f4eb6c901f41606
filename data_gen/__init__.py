"""Trajectory generators (symbolic search traces, LLM rewriting, self-training)."""
