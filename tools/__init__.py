"""The command-line tools beside the entry scripts: inference, export, conversion, dataset statistics and
subsets, benchmarks (tools/benchmarks/), the install helpers.

A package (installed with the project, setup.py) so that a tool run as `python tools/<name>.py` imports
another tool's module (`tools.serving_input`, `tools.benchmarks.*`) without touching `sys.path`.
"""
