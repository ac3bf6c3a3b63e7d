"""protoseg.data."""
