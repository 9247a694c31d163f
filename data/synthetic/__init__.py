"""The built-in demo set: its scenes, classes and hierarchy, drawn and written like the real data."""
