"""modelport's own API under ``/api/v1``: what neither Together nor Nebius has (resumable uploads, API
keys, the upload preflight)."""
