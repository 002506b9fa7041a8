"""diffseg: semi-supervised biomedical segmentation with diffusion models (the core; no Ray here)."""
__version__ = "0.1.0"
