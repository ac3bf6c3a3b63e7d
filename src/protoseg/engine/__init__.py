"""protoseg.engine."""
