"""HTTP edges: one folder per wire dialect; ``errors.py`` picks the dialect that answers a failure."""
