"""Backends: transport only (search a catalog, read bands onto a tile grid); the science is in the recipes."""
