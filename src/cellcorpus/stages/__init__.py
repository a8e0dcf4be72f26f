"""Stages: deterministic plan -> picklable per-unit function -> finalize (see STYLE.md §2)."""
