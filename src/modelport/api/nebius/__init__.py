"""Nebius Token Factory's dialect under ``/v0``: direct archive uploads and custom models."""
