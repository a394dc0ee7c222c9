"""routes, deployment_adapters, rollouts, experiments, endpoint_events: endpoints with several deployments

Revision ID: 0008
Revises: 0007

An endpoint row becomes one deployment of a route: its stable name, its traffic split, its rollouts and
experiments. Every existing endpoint gets a route of its own, under the same name, that sends it all
traffic (a v1 endpoint is a route with one deployment).
"""

import json
import secrets
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _now() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "routes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("visibility", sa.String(length=32), nullable=False),
        sa.Column("traffic", sa.JSON(), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        _now(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routes_account_id"), ["account_id"], unique=False)
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("route_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("label", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("traffic_mode", sa.String(length=32), server_default="TRAFFIC_MODE_LIVE", nullable=False)
        )
        batch_op.add_column(sa.Column("max_concurrent", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("autoscaling", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("replicas", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("etag", sa.String(length=32), server_default="", nullable=False))
        batch_op.create_index(batch_op.f("ix_endpoints_route_id"), ["route_id"], unique=False)
        batch_op.create_foreign_key("fk_endpoints_route_id_routes", "routes", ["route_id"], ["id"])
    op.create_table(
        "deployment_adapters",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.String(length=64), nullable=False),
        sa.Column("adapter_model_id", sa.String(length=64), nullable=False),
        sa.Column("revision_id", sa.String(length=64), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        _now(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["adapter_model_id"], ["models.id"]),
        sa.ForeignKeyConstraint(["deployment_id"], ["endpoints.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deployment_id", "adapter_model_id", name="uq_deployment_adapters"),
    )
    with op.batch_alter_table("deployment_adapters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployment_adapters_adapter_model_id"), ["adapter_model_id"])
        batch_op.create_index(batch_op.f("ix_deployment_adapters_deployment_id"), ["deployment_id"])
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("route_id", sa.String(length=64), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("strategy", sa.String(length=48), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=48), nullable=False),
        sa.Column("current_step", sa.Integer(), nullable=False),
        sa.Column("traffic_percent", sa.Integer(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("pause_info", sa.JSON(), nullable=True),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("etag", sa.String(length=32), nullable=False),
        _now(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["route_id"], ["routes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_route_id"), ["route_id"])
        batch_op.create_index(batch_op.f("ix_rollouts_state"), ["state"])
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("route_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=48), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        _now(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["route_id"], ["routes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("route_id", "kind", "name", name="uq_experiments_name"),
    )
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiments_route_id"), ["route_id"])
    op.create_table(
        "endpoint_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("route_id", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.String(length=64), nullable=True),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _now(),
        sa.ForeignKeyConstraint(["route_id"], ["routes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("endpoint_events", schema=None) as batch_op:
        batch_op.create_index("ix_endpoint_events_route_time", ["route_id", "created_at"])
    _give_each_endpoint_its_route()


def _give_each_endpoint_its_route() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, account_id, name, min_replicas, created_at, updated_at FROM endpoints")
    ).all()
    for row in rows:
        route_id = f"ep_{uuid.uuid4().hex}"
        traffic = json.dumps([{"deployment_id": row.id, "weight": 1.0}])
        conn.execute(
            sa.text(
                "INSERT INTO routes (id, account_id, name, visibility, traffic, etag, created_at, updated_at) "
                "VALUES (:id, :account, :name, 'VISIBILITY_PRIVATE', :traffic, :etag, :created, :updated)"
            ),
            {
                "id": route_id,
                "account": row.account_id,
                "name": row.name,
                "traffic": traffic,
                "etag": secrets.token_hex(8),
                "created": row.created_at,
                "updated": row.updated_at,
            },
        )
        conn.execute(
            sa.text(
                "UPDATE endpoints SET route_id = :route, label = :label, replicas = :replicas, etag = :etag "
                "WHERE id = :id"
            ),
            {
                "route": route_id,
                "label": row.name.rpartition("/")[2],
                "replicas": max(1, row.min_replicas),
                "etag": secrets.token_hex(8),
                "id": row.id,
            },
        )


def downgrade() -> None:
    op.drop_table("endpoint_events")
    op.drop_table("experiments")
    op.drop_table("rollouts")
    op.drop_table("deployment_adapters")
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_constraint("fk_endpoints_route_id_routes", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_endpoints_route_id"))
        for column in ("etag", "replicas", "autoscaling", "max_concurrent", "traffic_mode", "label", "route_id"):
            batch_op.drop_column(column)
    op.drop_table("routes")
