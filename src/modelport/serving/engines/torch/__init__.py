"""The embedded engine: transformers models on CPU or CUDA with continuous batching and multi-LoRA."""
