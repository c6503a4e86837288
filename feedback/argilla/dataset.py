"""The Argilla side of the loop, set up: which server, workspace and dataset (`Target`), a
client for it, the pair dataset's fields and questions, and annotators' accounts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feedback.argilla.stack import ArgillaError, Credentials


@dataclass(frozen=True)
class Target:
    """Which Argilla, workspace and dataset, and how records are distributed."""

    credentials: Credentials
    workspace: str = "tuneloop"
    dataset: str = "tuneloop-pairs"
    min_submitted: int = 2
    min_agreement: float = 0.6
    guidelines: str = ""
    timeout: float = 60.0
    pii_region: str = "US"


def connect(target: Target) -> Any:
    """An SDK client for the target server (raises ArgillaError when it cannot be reached)."""
    import argilla as rg

    creds = target.credentials
    try:
        return rg.Argilla(api_url=creds.url, api_key=creds.api_key, timeout=int(target.timeout))
    except Exception as err:
        raise ArgillaError(f"cannot reach Argilla at {creds.url} ({err}); is it up?") from None


def dataset_settings(target: Target) -> Any:
    """The pair dataset: conversation, two replies, a required A/B/tie choice and extras."""
    import argilla as rg

    return rg.Settings(
        fields=[
            rg.ChatField(name="conversation", title="The conversation so far"),
            rg.TextField(name="response_a", title="Reply A", use_markdown=True),
            rg.TextField(name="response_b", title="Reply B", use_markdown=True),
        ],
        questions=[
            rg.LabelQuestion(
                name="choice",
                title="Which reply is better?",
                labels={"A": "A is better", "B": "B is better", "tie": "Tie"},
                required=True,
            ),
            rg.TextQuestion(
                name="corrected",
                title="Optional: the answer as it should be",
                required=False,
                use_markdown=True,
            ),
            rg.RatingQuestion(
                name="rating",
                title="Optional: how good is the better reply (1-5)?",
                values=[1, 2, 3, 4, 5],
                required=False,
            ),
        ],
        metadata=[
            rg.TermsMetadataProperty(name="source"),
            rg.TermsMetadataProperty(name="model"),
            rg.TermsMetadataProperty(name="adapter_a"),
            rg.TermsMetadataProperty(name="adapter_b"),
            rg.IntegerMetadataProperty(name="conversation_id"),
        ],
        guidelines=target.guidelines
        or "Pick the better reply; write a corrected one if both fail.",
        distribution=rg.TaskDistribution(min_submitted=target.min_submitted),
        allow_extra_metadata=False,
    )


def ensure_dataset(client: Any, target: Target) -> Any:
    """The target dataset, created (with its workspace) on first use."""
    import argilla as rg

    workspace = client.workspaces(target.workspace)
    if workspace is None:
        workspace = rg.Workspace(name=target.workspace, client=client).create()
    dataset = client.datasets(name=target.dataset, workspace=target.workspace)
    if dataset is None:
        dataset = rg.Dataset(
            name=target.dataset,
            workspace=workspace,
            settings=dataset_settings(target),
            client=client,
        ).create()
    return dataset


def ensure_annotator(client: Any, target: Target, name: str, password: str) -> bool:
    """Create the annotator in Argilla (if missing) and add them to the workspace."""
    import argilla as rg

    user = client.users(username=name)
    created = user is None
    if user is None:
        user = rg.User(username=name, password=password, role="annotator", client=client).create()
    workspace = (
        client.workspaces(target.workspace)
        or rg.Workspace(name=target.workspace, client=client).create()
    )
    if name not in {u.username for u in workspace.users}:
        workspace.add_user(name)
    return created
