"""HTTP edges: one folder per wire dialect; ``errors.py`` maps domain errors to each envelope."""
