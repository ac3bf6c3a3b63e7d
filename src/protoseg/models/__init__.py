"""protoseg.models."""
