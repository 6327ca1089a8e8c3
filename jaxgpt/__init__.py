"""jaxgpt: GPT-style language models in JAX/Flax, from corpus to evaluation."""
