"""Train and evaluate: python train.py [group=option ...] [key=value ...]  (see README.md).

Under torchrun every rank runs this file. Ranks other than 0 neither write Hydra's .hydra/ nor a log
file: rank 0 owns the run directory (see rectnet/engine/distributed.py).
"""

import os
import sys

import hydra
from omegaconf import DictConfig

import rectnet.config  # noqa: F401  (registers the typed schema and the run-directory resolver)
from rectnet.engine.train import run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) != 0:
        sys.argv += ["hydra/job_logging=stdout"]  # no train.log; .hydra/: rectnet_output_subdir (config.py)
    main()
