"""The OpenAI inference dialect: chat completions, completions and embeddings."""
