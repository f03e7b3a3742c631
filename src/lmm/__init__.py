"""lmm: a LLaVA-1.5 reproduction and experiment platform (PyTorch Lightning + Hydra)."""

__version__ = "0.1.0"
