"""an index for address search: FTS5 trigram on SQLite, pg_trgm GIN on PostgreSQL

Both serve the same ``LIKE '%word%'`` the hotline's address lookup sends (a LIKE scan of
100,000 households cost 37 ms a query). SQLite's index is rebuilt after each asset import
(imports are the only writes to households).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE VIRTUAL TABLE households_fts USING fts5(search, content='households', "
                   "content_rowid='rowid', tokenize='trigram')")
        op.execute("INSERT INTO households_fts(households_fts) VALUES ('rebuild')")
    else:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX households_search_trgm ON households USING gin (search gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE households_fts")
    else:
        op.execute("DROP INDEX households_search_trgm")
