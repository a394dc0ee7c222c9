"""Inference: turn a catalog model (or adapter) name into tokens and embeddings.

``service.InferenceService`` is what the API calls: it resolves names through the catalog, renders chat
templates, tokenizes, enforces limits and turns token streams into text. Engines (``engines/``) only
see token ids and local model folders, so a vLLM-backed engine can replace the embedded one.
"""
