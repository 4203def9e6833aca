"""The model and its checkpoints: the Llama-family Flax NNX model, LoRA, loading HF safetensors / GGUF / the
embedded default, the tokenizer, adapters (save, load, PEFT export), dtype choice and kernel selection."""
