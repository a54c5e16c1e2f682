"""rectnet: reproducible training for the rectifier papers (He et al. 2015; Shang et al. 2016)."""

from rectnet import models  # noqa: F401  (registers models with timm)

__version__ = "0.1.0"
