"""Database URLs as driftloop prints them: the password replaced by ``***``."""

from __future__ import annotations

import re

__all__ = ["HIDDEN", "redact_url"]

HIDDEN = "***"

# libpq's secrets: the password, and sslpassword (the client key's passphrase).
# A password in a URL's query (``?password=...``), up to the next parameter or the fragment.
_QUERY_PASSWORD = re.compile(r"(^|&)((?:ssl)?password=)[^&#]*", re.IGNORECASE)
# A password in a libpq keyword/value string (``host=db password='a b' dbname=x``): a quoted value
# (backslash escapes) or one word.
_KEYWORD_PASSWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with every password in it replaced by ``***``, the rest as written.

    Takes a URL (``postgresql://user:secret@host/db``, a ``password=`` query parameter) or a
    libpq keyword/value string (``host=db user=u password=secret``). An empty password (the
    embedded server's ``postgres:@``) has nothing to hide and stays empty.
    """
    scheme, slashes, rest = url.partition("://")
    if not slashes:
        return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + HIDDEN, url)
    # The authority ends where the path, query or fragment starts (as libpq reads it too).
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and colon and password:
        authority = f"{user}:{HIDDEN}@{host}"
    path, question, query = tail.partition("?")
    query = _QUERY_PASSWORD.sub(lambda m: m.group(1) + m.group(2) + HIDDEN, query)
    return f"{scheme}://{authority}{path}{question}{query}"
