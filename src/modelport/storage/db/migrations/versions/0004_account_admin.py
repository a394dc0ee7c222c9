"""accounts.is_admin: the first account administers keys for every account

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Existing installs: the account made first (the bootstrap account) becomes the administrator.
    op.execute("UPDATE accounts SET is_admin = true WHERE id = (SELECT id FROM accounts ORDER BY created_at LIMIT 1)")


def downgrade() -> None:
    op.drop_column("accounts", "is_admin")
