"""Placeholder: the model-check schema."""
