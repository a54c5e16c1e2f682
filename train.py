"""Train and evaluate: python train.py [group=option ...] [key=value ...]  (see README.md).

Under torchrun every rank runs this file. Ranks other than 0 neither write Hydra's .hydra/
(configs/train.yaml, hydra.output_subdir) nor train.log (configs/hydra/job_logging/rank_zero.yaml): rank 0
owns the run directory (see rectnet/engine/distributed.py).
"""

import sys

import hydra
from omegaconf import DictConfig

import rectnet.config  # noqa: F401  (registers the typed schema and the run-directory resolver)
from rectnet.engine.train import run
from rectnet.hints import hint_on_failure


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    with hint_on_failure(sys.argv[1:]):  # a mistyped key or option: "did you mean ..." under Hydra's error
        main()
