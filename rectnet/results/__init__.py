"""Results: run directories -> the papers' tables.

runs.py (finding and reading run directories), variants.py (which configs build the same network),
statistics.py (Single / Average / Vote and the ImageNet columns), table.py (a paper table as data, filled from
runs), comparison.py (the difference of two rows with its 95% Welch interval, the verdicts on the papers'
claims), papers/ (one module per paper: its printed tables, baseline rows and claims), render.py (Markdown and
CSV), cli.py (`python -m rectnet.tables`).
"""
