"""Evaluation analysis: metrics with task-bootstrap intervals, seed aggregation, behaviours from call
logs, robustness splits, run-directory loading, plots, the sweep report and its wandb logging.

Pure functions over ``envs.base.EpisodeResults`` and run directories; nothing here trains or samples.
"""
