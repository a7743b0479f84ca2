"""The `hrvqa` lmms-eval task: `hrvqa.yaml` (the definition) and `utils.py` (the functions it names)."""
