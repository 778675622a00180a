"""Bundled payload data: the real labelled sample and the benign-augmentation templates."""
