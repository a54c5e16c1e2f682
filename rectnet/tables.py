"""`python -m rectnet.tables`: the one command line of rectnet.results (rectnet/results/cli.py).

Not a module to import: it stays only because users, the README and scripts/reproduce/ type that command.
"""

from rectnet.results.cli import main

if __name__ == "__main__":
    main()
