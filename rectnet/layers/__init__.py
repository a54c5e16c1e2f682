from rectnet.layers.activations import ACTIVATIONS, ActivationFactory, Rectifier, make_activation
from rectnet.layers.init import INITS, InitSpec, init_model

__all__ = ["ACTIVATIONS", "ActivationFactory", "Rectifier", "make_activation", "INITS", "InitSpec", "init_model"]
