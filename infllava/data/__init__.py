"""Data layer: LLaVA-format records (conversations with image paths), read and checked the same way
for training and for evaluation. Nothing here tokenizes or loads images; see `records`."""
