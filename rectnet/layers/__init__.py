# Importing the package fills the activation registry: the papers' rectifiers (activations), torch's smooth
# activations (smooth) and the one a user brings (custom).
from rectnet.layers import custom, smooth
from rectnet.layers.activations import ACTIVATIONS, ActivationFactory, Rectifier, make_activation
from rectnet.layers.init import INITS, InitSpec, init_model

__all__ = [
    "ACTIVATIONS",
    "ActivationFactory",
    "Rectifier",
    "make_activation",
    "INITS",
    "InitSpec",
    "init_model",
    "custom",
    "smooth",
]
