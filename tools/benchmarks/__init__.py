"""The benchmarks of tools/benchmark.py, one module per subcommand (see that script's docstring).

Each subcommand module has `FLAGS_USED` (the names of the flags it reads, defined by `common.define_flags`)
and `run(flag_values)`; tools/benchmark.py defines the chosen subcommand's flags and calls its `run`.
"""
