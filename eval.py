"""Evaluate a checkpoint under a test protocol: python eval.py run_dir=<run dir> eval.protocol=<center|ten_view|dense>

Writes <run_dir>/eval_<protocol>.json; `python eval.py --help` lists the options (rectnet/engine/eval_command.py).
"""

import sys

from rectnet.engine.eval_command import main

if __name__ == "__main__":
    sys.exit(main())
