"""`pytest --nbval notebooks/` runs the notebooks in quick mode, so the test command never rewrites the
committed figures or runs: quick mode trains 1 epoch and writes under runs/quick/. Set GENRE_QUICK=0
for the full run (what `make demo` executes), which writes figures/ and runs/."""

import os

os.environ.setdefault("GENRE_QUICK", "1")
