"""The Absolute Unit NN: an MLP from a token's absolute index to the token, that reads by gradient steps.

The opposite of plasticlm's design (adaptation by weights instead of by a recurrent state),
measured through the same :class:`plasticlm.lm.LM` interface. See ``model`` (architecture),
``offline`` (training, checkpoints) and ``online`` (reading, scoring, generation).
"""
from .config import AUNNConfig, OfflineConfig, OnlineConfig
from .model import AUNN, decode_index, encode_index
from .offline import OfflineTrainer, load_aunn, save_aunn
from .online import AUNNAsLM, AUNNState

__all__ = ["AUNN", "AUNNAsLM", "AUNNConfig", "AUNNState", "OfflineConfig", "OfflineTrainer", "OnlineConfig",
           "decode_index", "encode_index", "load_aunn", "save_aunn"]
