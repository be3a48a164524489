"""Session records and the stores that keep them."""
