"""Host-side data: sequence packing (packing.py, its row assignment in bins.py) and task pipelines (tasks.py)."""
