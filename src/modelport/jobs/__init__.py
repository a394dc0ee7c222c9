"""Ingestion jobs: their states, legal transitions, and the workers that claim and run them."""
