"""Checkpoint converters: official INF-LLaVA layout -> infllava."""

from .official import ConversionError, ConversionReport, OFFICIAL_KEY_MAP, convert_official, map_key, read_state_dict

__all__ = ["ConversionError", "ConversionReport", "OFFICIAL_KEY_MAP", "convert_official", "map_key", "read_state_dict"]
