"""protoseg.viz."""
