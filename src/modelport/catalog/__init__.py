"""Which models, adapters and jobs exist, who owns them, and the rules for adding and removing them."""
