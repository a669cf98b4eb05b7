"""Model registry, loading, memory tiers and LoRA files. Import submodules directly; torch is imported lazily."""
