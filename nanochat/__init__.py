"""nanochat: build a small ChatGPT end to end."""
