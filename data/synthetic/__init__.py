"""The built-in demo set's scenes: its classes, hierarchy and rasteriser."""
