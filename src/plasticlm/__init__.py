"""plasticlm: a recurrent language model that learns by reading."""
from .config import ModelConfig
from .model import PlasticLM
from .ops import gated_average, gated_decay
from .state import State
from .trainer import segment_backward

__version__ = "0.1.0"
__all__ = ["ModelConfig", "PlasticLM", "State", "gated_average", "gated_decay", "segment_backward", "__version__"]
