"""diffseg: semi-supervised biomedical segmentation with diffusion models (the core; no Ray here)."""
__version__ = "0.1.0"

# the tables that own names register their config sections and checks: any import of the core
# (``diffseg.config`` included) sees every method's section
from . import data, methods  # noqa: E402,F401
