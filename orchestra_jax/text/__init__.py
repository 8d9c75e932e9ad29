"""Tokenizers (Hugging Face JSON files) and the Qwen3 chat / Hermes tool-call protocol."""
