"""Host-side data: sequence packing (packing.py; prefix-shared groups in shared_packing.py; row assignment in bins.py) and task pipelines (tasks.py)."""
