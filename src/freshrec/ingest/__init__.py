"""Domain rules for incoming data: validation, feedback weights, import."""
