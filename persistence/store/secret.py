"""The store's own secret, from which callback tokens are derived."""

from __future__ import annotations

import secrets

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from pausepoint.persistence.store.core import StoreCore
from pausepoint.persistence.tables import (
    meta,
)


class SecretRoom(StoreCore):
    def secret(self) -> bytes:
        """The store's random 256-bit secret (callback tokens derive from it), made on first use."""
        with self.read() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == "token_secret")).scalar()
        if value is None:
            try:
                with self.write() as conn:
                    conn.execute(
                        insert(meta).values(key="token_secret", value=secrets.token_hex(32))
                    )
            except IntegrityError:
                pass  # another process made it first: use theirs
            with self.read() as conn:
                value = conn.execute(
                    select(meta.c.value).where(meta.c.key == "token_secret")
                ).scalar_one()
        return bytes.fromhex(value)
