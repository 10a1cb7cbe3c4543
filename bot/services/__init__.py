"""Use cases: answering questions about images, streaming replies, keeping conversations."""
