"""rectnet: reproducible training for the rectifier papers (He et al. 2015; Shang et al. 2016)."""

from rectnet import convert, models  # noqa: F401  (models: registers them with timm, once imported; convert: callable)

__version__ = "0.1.0"
