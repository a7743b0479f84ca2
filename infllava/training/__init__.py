"""Training: data loading, labels, and the training loop of INF-LLaVA."""
