"""The preference store: every read and write of the database goes through `Store`.

Each write method runs in its own short transaction and has committed (fsync'd, on SQLite)
before it returns, so the UI can acknowledge a click the moment the call returns and a crash
right after loses nothing; a write that finds the database busy is tried again and then
refused in plain words. Methods take keyword arguments only and hand back ids or plain
dataclasses from `feedback.records`, never live ORM objects.

The class is assembled from one part per job: accounts (`users`), chats and feedback
(`chats`), what rounds and exports read plus bulk imports (`data`), the Argilla outbox
and sync (`argilla`), chat front ends' users and chats (`frontends`) and Open WebUI's
feedback (`openwebui`). No other module opens a database session.
"""

from __future__ import annotations

from feedback.records import UserInfo
from feedback.store.argilla import ArgillaStore
from feedback.store.chats import ChatStore
from feedback.store.data import DataStore
from feedback.store.openwebui import OpenWebUIStore
from feedback.store.users import UserStore

__all__ = ["Store", "UserInfo"]


class Store(UserStore, ChatStore, DataStore, ArgillaStore, OpenWebUIStore):
    """Reads and writes of the preference store over one SQLAlchemy engine."""
