"""Splitting an image list into shards: which lines each shard of the writer holds, without holding the list.

Line i of N goes to shard ``i * shards // N`` (contiguous blocks, list order kept), so the same list always
gives the same shards whatever the number of workers or machines. The split is found by streaming the file
twice and keeping only the shards' byte offsets.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

_BLOCK = 16 << 20


@dataclasses.dataclass(frozen=True)
class ListIndex:
    """Where each shard's lines start in the list file.

    Attributes:
      sha256: Hash of the list file; every shard and task manifest records it so that shards written from
        a different list are never mixed in.
      num_bytes: Size of the list file.
      num_lines: Lines in the file (blank and bad lines included: they keep their line numbers).
      offsets: num_shards + 1 byte offsets; shard s is ``[offsets[s], offsets[s + 1])``.
      first_lines: num_shards + 1 0-based line numbers aligned with `offsets`.
    """

    sha256: str
    num_bytes: int
    num_lines: int
    offsets: tuple[int, ...]
    first_lines: tuple[int, ...]

    @property
    def num_shards(self) -> int:
        return len(self.offsets) - 1

    def num_lines_of(self, shard: int) -> int:
        """Lines of the list that shard `shard` holds."""
        return self.first_lines[shard + 1] - self.first_lines[shard]


def index_list(path: str, num_shards: int) -> ListIndex:
    """Two streaming passes over the list: count lines (and hash), then find the shard boundaries.

    Both passes work on 16 MiB blocks with C-speed primitives (``bytes.count``, numpy), so a 17.6M-line
    list takes seconds and a few tens of MB whatever its size.

    Raises:
      RuntimeError: The file changed between the two passes.
    """
    digest = hashlib.sha256()
    newlines = num_bytes = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            newlines += block.count(b"\n")
            num_bytes += len(block)
            last = block[-1:]
    num_lines = newlines + (last != b"\n")
    first_lines = [s * num_lines // num_shards for s in range(num_shards + 1)]
    # Shard s starts right after newline number first_lines[s] - 1 (0-based), or at byte 0 when
    # first_lines[s] == 0: with more shards than lines the leading shards are empty and all start there.
    targets = np.asarray(first_lines[1:-1], dtype=np.int64) - 1
    offsets = [0] * (1 + int(np.count_nonzero(targets < 0)))
    targets = targets[targets >= 0]
    num_found = len(offsets) + targets.size
    seen = 0  # Newlines before the current block.
    position = 0  # Byte offset of the current block.
    with open(path, "rb") as f:
        while len(offsets) < num_found and (block := f.read(_BLOCK)):
            newline_at = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
            wanted = targets[(targets >= seen) & (targets < seen + newline_at.size)]
            offsets.extend((position + newline_at[wanted - seen] + 1).tolist())
            seen += newline_at.size
            position += len(block)
    if len(offsets) != num_shards:  # Every target newline exists in an unchanged file.
        raise RuntimeError(f"{path} changed while it was being indexed; run again")
    offsets.append(num_bytes)
    return ListIndex(digest.hexdigest(), num_bytes, num_lines, tuple(offsets), tuple(first_lines))
