"""Modality-agnostic core: noise processes, denoisers, objectives, the update loop and its engine."""
