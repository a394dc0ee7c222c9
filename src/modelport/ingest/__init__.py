"""Turning a user's source (Hugging Face repo, archive URL) into a validated, stored artifact."""
