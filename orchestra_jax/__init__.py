"""orchestra_jax: ToolOrchestra (orchestrator RL with GRPO) in JAX."""
