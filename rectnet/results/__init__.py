"""Results: run directories -> the papers' tables.

runs.py (finding and reading run directories), variants.py (which configs build the same network),
statistics.py (Single / Average / Vote and the ImageNet columns), table.py (a paper table as data, filled from
runs), papers/ (one module per paper: its printed tables), render.py (Markdown and CSV), cli.py
(`python -m rectnet.tables`).
"""
