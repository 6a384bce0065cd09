"""Comparators measured in the same run as the bridge: the ceilings and the conventional way."""
