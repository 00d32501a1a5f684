"""Version 3: a running job's interaction token, so a restart can edit the job's progress message in place.

The token lets the bot edit the member's original response for 15 minutes after the command; the store clears it
when the job ends. Frozen, like every migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

NAME = "interaction_token"


def upgrade(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN interaction_token TEXT"))
