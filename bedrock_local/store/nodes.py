"""The serving nodes table: a serving process registers where it listens, renews its entry while
it lives and removes it when it stops; the API finds live nodes here."""

import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from bedrock_local.store.resources import utcnow
from bedrock_local.store.schema import ServingNode


def register(session: Session, node_id: str, endpoint: str, ttl_seconds: float) -> None:
    now = utcnow()
    session.merge(ServingNode(node_id=node_id, endpoint=endpoint, started_at=now,
                              expires_at=now + datetime.timedelta(seconds=ttl_seconds)))


def renew(session: Session, node_id: str, ttl_seconds: float) -> bool:
    """Extend the node's entry; False when it is gone (removed, or expired and cleaned up)."""
    done = session.execute(update(ServingNode).where(ServingNode.node_id == node_id).values(
        expires_at=utcnow() + datetime.timedelta(seconds=ttl_seconds)).execution_options(synchronize_session=False))
    return done.rowcount == 1


def remove(session: Session, node_id: str) -> None:
    session.execute(delete(ServingNode).where(ServingNode.node_id == node_id))


def live_endpoints(session: Session) -> dict[str, str]:
    """node id -> endpoint of every node whose entry has not expired."""
    rows = session.execute(select(ServingNode.node_id, ServingNode.endpoint)
                           .where(ServingNode.expires_at > utcnow()).order_by(ServingNode.node_id))
    return {node_id: endpoint for node_id, endpoint in rows}
