"""Version 2: what DashScope billed per job, and erasure that waits for a running job to end.

* ``reservations.billed_seconds``: the seconds of audio the service generated for the job, over all its attempts
  (a cancel after audio arrived, retried requests that streamed audio, a failure after the stream finished all
  cost money). The operator's global budget counts these, refunded or not. Existing committed rows billed what
  they settled; refunded ones are taken as 0 (nothing recorded).
* ``jobs.erase_on_finish``: the member asked for their data to be deleted while this job was running. Its text
  was erased at once; its owner id (which Cancel checks) is erased when the job ends.

Frozen once released, like every migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

NAME = "billing and erasure"


def upgrade(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE reservations ADD COLUMN billed_seconds INTEGER NOT NULL DEFAULT 0"))
    conn.execute(sa.text("UPDATE reservations SET billed_seconds = seconds WHERE state = 'committed'"))
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN erase_on_finish BOOLEAN NOT NULL DEFAULT FALSE"))
    conn.execute(sa.text("CREATE INDEX ix_jobs_guild_status ON jobs (guild_id, status)"))
