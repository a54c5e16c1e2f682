"""Architectures. Importing this package registers every model with rectnet's config and, once timm is imported,
with timm.create_model."""

from rectnet.models import allcnn, convpool, prelu_nets, vgg_cifar  # noqa: F401  (registers their models)
from rectnet.models.spec import SpecNet
from rectnet.models.zoo import MODELS, create, spec_layer_facts

__all__ = ["MODELS", "create", "spec_layer_facts", "SpecNet"]
