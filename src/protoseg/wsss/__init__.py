"""protoseg.wsss."""
