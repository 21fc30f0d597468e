"""What every operation gets: who is calling (account, region) and the stores it may use."""

from dataclasses import dataclass, field
from typing import Mapping

from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore
from bedrock_local.store.database import Database
from bedrock_local.store.resources import Scope


@dataclass(frozen=True)
class Context:
    account: str
    region: str
    db: Database
    objects: ObjectStore
    settings: Settings
    request_id: str = ""
    bucket_owners: Mapping[str, str] = field(default_factory=dict)  # bucket -> owning account (credentials file)

    @property
    def scope(self) -> Scope:
        return Scope(self.account, self.region)
