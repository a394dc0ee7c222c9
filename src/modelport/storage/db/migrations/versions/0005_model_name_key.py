"""models.name_key: model names are unique under case folding and Unicode normalisation

Revision ID: 0005
Revises: 0004

Existing rows get ``model_name_key(name)``. Names that already collide under it (``alice/MyModel``
next to ``alice/mymodel``, accepted before this revision) are kept as they are, both usable by their
exact spelling: the oldest takes the plain key and each later one the key plus ``#<id>``, which no new
name can produce (``#`` is not allowed in names), so neither blocks the other and no new spelling of
either can be added.
"""

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _key(name: str) -> str:
    # tables.model_name_key as of this revision; a migration keeps its own copy of the rule it applies.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKC", name).casefold())


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_key", sa.String(length=200), nullable=True))
    models = sa.table("models", sa.column("id", sa.String), sa.column("name", sa.String), sa.column("name_key"))
    conn = op.get_bind()
    taken: set[str] = set()
    rows = conn.execute(sa.text("SELECT id, name FROM models ORDER BY created_at, id")).all()
    for model_id, name in rows:
        key = _key(name)
        key = key if key not in taken else f"{key}#{model_id}"
        taken.add(key)
        conn.execute(models.update().where(models.c.id == model_id).values(name_key=key))
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_name_key"), ["name_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_name_key"))
        batch_op.drop_column("name_key")
