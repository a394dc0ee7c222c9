"""model_revisions and revision_files: a model is a name with an ordered list of immutable revisions

Revision ID: 0007
Revises: 0006

Every ready model becomes its own revision 1 (its manifest, size and source), and its files move from
``model_files`` (keyed by model) to ``revision_files`` (keyed by revision). ``models.revision_id``
names the head; ``endpoints.revision_id`` the revision an endpoint serves, its model's head here.
"""

import json
import os
import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _revision_id() -> str:
    # ids.new_id("rev") as of this revision: a UUIDv7 layout, sortable by creation.
    value = (time.time_ns() // 1_000_000 & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return f"rev-{uuid.UUID(int=value)}"


def upgrade() -> None:
    op.create_table(
        "model_revisions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("source_kind", sa.String(length=32), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("problems", sa.JSON(), nullable=True),
        sa.Column("base_revision_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("validated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "number", name="uq_model_revisions_number"),
    )
    with op.batch_alter_table("model_revisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_revisions_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_revisions_base_revision_id"), ["base_revision_id"], unique=False)
    op.create_table(
        "revision_files",
        sa.Column("revision_id", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("etag", sa.String(length=48), nullable=True),
        sa.ForeignKeyConstraint(["revision_id"], ["model_revisions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("revision_id", "path"),
    )
    with op.batch_alter_table("revision_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_revision_files_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_revision_files_etag"), ["etag"], unique=False)
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("last_revision", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision_id", sa.String(length=64), nullable=True))
    _move_files_to_revisions()
    _pin_adapters_to_their_bases()
    _give_running_jobs_their_revision()
    with op.batch_alter_table("model_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_files_sha256"))
    op.drop_table("model_files")


def _move_files_to_revisions() -> None:
    conn = op.get_bind()
    ready = conn.execute(sa.text("SELECT id FROM models WHERE status = 'ready'")).scalars().all()
    for model_id in ready:
        params = {"rev": _revision_id(), "model": model_id}
        # INSERT … SELECT copies the manifest JSON as the database holds it, on SQLite and PostgreSQL alike.
        conn.execute(
            sa.text(
                "INSERT INTO model_revisions (id, model_id, number, status, manifest, total_bytes, source_kind, "
                "source, created_at, validated_at) SELECT :rev, id, 1, 'ready', manifest, total_bytes, "
                "source_kind, source, created_at, created_at FROM models WHERE id = :model"
            ),
            params,
        )
        conn.execute(
            sa.text(
                "INSERT INTO revision_files (revision_id, path, size, sha256) "
                "SELECT :rev, path, size, sha256 FROM model_files WHERE model_id = :model"
            ),
            params,
        )
        conn.execute(sa.text("UPDATE models SET revision_id = :rev, last_revision = 1 WHERE id = :model"), params)
        conn.execute(sa.text("UPDATE endpoints SET revision_id = :rev WHERE model_id = :model"), params)


def _pin_adapters_to_their_bases() -> None:
    op.get_bind().execute(
        sa.text(
            "UPDATE model_revisions SET base_revision_id = (SELECT b.revision_id FROM models a JOIN models b "
            "ON b.id = a.base_model_id WHERE a.id = model_revisions.model_id)"
        )
    )


def _give_running_jobs_their_revision() -> None:
    """A job queued or running across the upgrade makes its model's revision 1: the job finds it in its
    arguments (``revisionId``), as jobs submitted after the upgrade do."""
    conn = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("args", sa.JSON))
    rows = conn.execute(
        sa.text(
            "SELECT j.id, j.model_id, m.source_kind, m.source, m.created_at FROM jobs j JOIN models m "
            "ON m.id = j.model_id WHERE j.status IN ('Queued', 'Running') AND m.status = 'uploading'"
        )
    ).all()
    for job_id, model_id, source_kind, source, created_at in rows:
        rev = _revision_id()
        conn.execute(
            sa.text(
                "INSERT INTO model_revisions (id, model_id, number, status, total_bytes, source_kind, source, "
                "job_id, created_at) VALUES (:rev, :model, 1, 'pending', 0, :kind, :source, :job, :created)"
            ),
            {
                "rev": rev,
                "model": model_id,
                "kind": source_kind,
                "source": source,
                "job": job_id,
                "created": created_at,
            },
        )
        conn.execute(sa.text("UPDATE models SET last_revision = 1 WHERE id = :model"), {"model": model_id})
        args = conn.execute(sa.select(jobs.c.args).where(jobs.c.id == job_id)).scalar_one()
        args = json.loads(args) if isinstance(args, str) else dict(args)
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(args={**args, "revisionId": rev, "revision": 1}))


def downgrade() -> None:
    op.create_table(
        "model_files",
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "path"),
    )
    with op.batch_alter_table("model_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_files_sha256"), ["sha256"], unique=False)
    op.execute(
        "INSERT INTO model_files (model_id, path, size, sha256) SELECT m.id, f.path, f.size, f.sha256 "
        "FROM models m JOIN revision_files f ON f.revision_id = m.revision_id"
    )
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_column("revision_id")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("last_revision")
        batch_op.drop_column("revision_id")
    with op.batch_alter_table("revision_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_revision_files_etag"))
        batch_op.drop_index(batch_op.f("ix_revision_files_sha256"))
    op.drop_table("revision_files")
    with op.batch_alter_table("model_revisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_revisions_base_revision_id"))
        batch_op.drop_index(batch_op.f("ix_model_revisions_model_id"))
    op.drop_table("model_revisions")
