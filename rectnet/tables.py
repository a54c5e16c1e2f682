"""`python -m rectnet.tables`: the papers' result tables from run directories (rectnet/results/cli.py)."""

from rectnet.results.cli import main

if __name__ == "__main__":
    main()
