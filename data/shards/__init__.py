"""Lists into shards: the list cut into shard blocks, one shard written crash-safely, the worker processes, the flags a split is written with, and a whole dataset."""
