"""`lancy report`: self-contained HTML pages of runs (page.py) with inline SVG plots (plots.py)."""
