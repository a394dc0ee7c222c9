"""Dedicated endpoints: replicas of one model on reserved hardware, each in its own process."""
