"""Train and evaluate: python train.py [group=option ...] [key=value ...]  (see README.md)."""

import hydra
from omegaconf import DictConfig

import rectnet.config  # noqa: F401  (registers the typed schema before Hydra composes)
from rectnet.engine.train import run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
