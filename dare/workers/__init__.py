"""Ray workers (verl single-controller): one class per role."""
