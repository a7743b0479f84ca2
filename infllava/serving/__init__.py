"""Serving: the batching engine (`engine.py`) and the OpenAI-compatible HTTP server (`api.py`)."""
