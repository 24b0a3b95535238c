"""The paper's studies (`studies.py`), their runner (`run.py`) and their plots (`plots.py`)."""
