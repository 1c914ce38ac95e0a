"""tunekit.model: local fixtures (tiny tokenizer/model, llm-jp HF tokenizer) and model specs.

Import-light: torch, transformers and sentencepiece load only when a fixture is built.
"""
from .fixtures import llmjp_tokenizer_dir, resolve_model, tiny_model_dir, tiny_tokenizer_dir

__all__ = ["llmjp_tokenizer_dir", "resolve_model", "tiny_model_dir", "tiny_tokenizer_dir"]
