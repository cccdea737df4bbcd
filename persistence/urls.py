"""URLs as people may see them: credentials masked, everything else kept.

A store, broker or LLM URL may carry a password (``postgresql://app:pw@db/x``), a
token as the user name (``https://sk-...@llm.example/v1``) or a key in its query
(``?api_key=...``). Anything that shows a URL (a repr, a log line, an error
message, Flower's Config tab) shows ``mask_url(url)`` instead.
"""

from __future__ import annotations

import re
from typing import overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters whose values are credentials.
_SECRET_PARAM = re.compile(r"pass|secret|token|key|sig|auth|credential", re.IGNORECASE)
# The fallback for strings urlsplit cannot take apart: hide whatever sits before an @.
_USERINFO = re.compile(r"(//)[^/@]*@")


@overload
def mask_url(url: str) -> str: ...
@overload
def mask_url(url: None) -> None: ...
def mask_url(url: str | None) -> str | None:
    """``url`` with any password, token-like user name or secret query value replaced."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            if colon:
                userinfo = f"{user}:{MASK}"
            elif parts.scheme in ("http", "https"):
                # A web URL's bare user name is almost always a token.
                userinfo = MASK
            netloc = f"{userinfo}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(_SECRET_PARAM.search(k) for k, _ in pairs):
                query = urlencode(
                    [(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*"
                )
        if netloc == parts.netloc and query == parts.query:
            return url  # nothing to hide: the URL exactly as given
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return _USERINFO.sub(rf"\1{MASK}@", url)
