"""Host-side data: sequence packing (packing.py) and task pipelines (tasks.py)."""
