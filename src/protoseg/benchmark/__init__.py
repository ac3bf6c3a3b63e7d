"""protoseg.benchmark."""
