"""What a URL of a list becomes before it is fetched, and which URLs are not fetched at all.

The lists hold IRIs as people and CMSs write them: non-ASCII paths (``/photos/café.jpg``), spaces,
internationalised host names. http.client sends only ASCII, so `request_url` converts them the way a
browser does (the WHATWG URL standard): the host by IDNA (UTS #46 mapping, then Punycode, with the
well-kept `idna` package), the path and query by UTF-8 percent-encoding of what is not allowed there, an
existing ``%XX`` kept as it is. A URL that cannot be converted (a host that IDNA refuses, a bad port) is a
`ValueError` with the reason, and its line is skipped with it.

A URL that carries credentials (``http://user:password@host/...``) is not fetched: a list is untrusted
input, and sending a password that a list contains, in clear over http and to whatever host a redirect
names, is not what a crawler should do (browsers likewise block credentials in subresource URLs).
`find_credentials` counts such lines, for the one warning of a run; the fetch skips each one with
`CREDENTIALS`.
"""

from __future__ import annotations

import gzip
import os
import re
import string
import urllib.parse
from typing import Final

import idna

# The skip reason of a URL with credentials (the password is never repeated in a log line).
CREDENTIALS: Final = "URL carries credentials (user:password@host; not fetched)"

# What stays as it is in a path and in a query: the printable ASCII punctuation outside the WHATWG
# path percent-encode set (controls, space, " # < > ? ` { }) and special-query set (controls, space,
# " # < > '). Letters, digits and -._~ are always kept; '%' is kept, so an existing %XX is not encoded
# twice (a lone '%' stays as it is, as in a browser).
_PATH_SAFE: Final = "".join(c for c in string.punctuation if c not in '"#<>?`{}')
_QUERY_SAFE: Final = "".join(c for c in string.punctuation if c not in "\"#<>'")
# A line whose first field is a URL with an '@' in its authority (what urlsplit calls the netloc).
_CREDENTIALS_LINE: Final = re.compile(rb"^(?:\xef\xbb\xbf)?[ \t]*[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*@", re.M)
# What no host name holds (WHATWG's forbidden host code points, less '%' and ':', and the controls).
_FORBIDDEN_IN_HOST: Final = frozenset(" #/<>?@[\\]^|\x7f") | frozenset(map(chr, range(32)))
_BLOCK: Final = 1 << 24


def has_credentials(url: str) -> bool:
    """Whether `url` has a user name (and maybe a password) before its host: ``scheme://user:pw@host``."""
    return "@" in urllib.parse.urlsplit(url).netloc


def _ascii_host(host: str) -> str:
    """The host as DNS knows it: non-ASCII labels by IDNA, ASCII labels as they are (lower case).

    ASCII labels are not checked against IDNA's rules, as in a browser: real hosts have underscores and
    leading hyphens that IDNA 2008 refuses.
    """
    ascii_host = host
    if not host.isascii():
        try:
            mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
            ascii_host = ".".join(
                label if label.isascii() else idna.alabel(label).decode("ascii")
                for label in mapped.split(".")
            )
        except (idna.IDNAError, UnicodeError) as e:
            raise ValueError(f"cannot encode the host {host!r} (IDNA: {e})") from None
    if ":" not in ascii_host and not _FORBIDDEN_IN_HOST.isdisjoint(ascii_host):  # ':': an IPv6 address
        raise ValueError(f"cannot encode the host {host!r} (a character no host name has)")
    return ascii_host


def request_url(url: str) -> str:
    """The ASCII URL to request for `url`, as a browser would send it (the fragment is dropped).

    ``http://Bücher.example/café au lait.jpg?q=ä`` becomes
    ``http://xn--bcher-kva.example/caf%C3%A9%20au%20lait.jpg?q=%C3%A4``; an ASCII URL without spaces,
    controls or ``"<>`{}`` comes back unchanged (its host in lower case). Credentials are not carried over (such URLs are not
    fetched, see `has_credentials`).

    Raises:
      ValueError: The URL cannot be encoded (the message says why), or it has no host.
    """
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise ValueError("no host")
    try:
        port = parts.port
        host = _ascii_host(parts.hostname)
        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc += f":{port}"
        path = urllib.parse.quote(parts.path, safe=_PATH_SAFE)
        query = urllib.parse.quote(parts.query, safe=_QUERY_SAFE)
    except UnicodeError as e:  # a lone surrogate: no UTF-8 for it
        raise ValueError(f"cannot encode {e.object[e.start : e.end]!r} as UTF-8") from None
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, ""))


def find_credentials(url_list: str | os.PathLike[str]) -> tuple[int, int | None]:
    """How many lines of a URL list give a URL with credentials, and the first one's 1-based number.

    One streaming pass over the bytes (a ``.gz`` list through gzip); a block without an '@' costs only
    its newline count, so the 17.6M-line training list takes about as long as reading it.
    """
    name = os.fspath(url_list)
    count, first, lines_before, tail = 0, None, 0, b""
    with gzip.open(name, "rb") if name.endswith(".gz") else open(name, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            data = tail + block
            if block:  # whole lines only; the rest waits for the next block
                cut = data.rfind(b"\n") + 1
                data, tail = data[:cut], data[cut:]
            if b"@" in data:
                for match in _CREDENTIALS_LINE.finditer(data):
                    count += 1
                    if first is None:
                        first = lines_before + data.count(b"\n", 0, match.start()) + 1
            lines_before += data.count(b"\n")
            if not block:
                return count, first
