"""Evaluation: benchmarks and scoring for INF-LLaVA models (see `hrvqa` for the procedural HR-VQA benchmark)."""
