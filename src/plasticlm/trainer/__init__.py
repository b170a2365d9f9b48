"""Training: the exact segment-wise trainer core and the loops built on it."""
from .segment import segment_backward, segment_loss

__all__ = ["segment_backward", "segment_loss"]
