"""Runs INSIDE the Argilla server's own virtualenv: patch, then hand over to its CLI.

`python feedback/argilla/launcher.py start --host ...` behaves like
`python -m argilla_server start ...`, except that the three search-engine methods that send
a Painless-scripted update (`POST /{index}/_update/{id}` with a script) are replaced by
get-document / edit `_source` / re-index. The local search engine (osmem-server) refuses
scripted updates, so without this a submitted response is saved in Argilla's database but
the index (the annotator's Pending queue, progress counters, status filters) goes stale.

Only the local stack (`feedback.argilla.stack`) starts the server this way; a team's own
Argilla with a real Elasticsearch/OpenSearch is never touched. This file imports nothing
from tuneloop: that environment has argilla-server's dependency pins, not ours.
"""

from __future__ import annotations

import json
import sys
from typing import Any


async def _edit_source(engine: Any, index_name: str, doc_id: str, edit: Any) -> None:
    """Fetch a document, apply `edit` to its `_source`, and index it back (refresh=True)."""
    found = await engine.client.get(index=index_name, id=doc_id)
    source = found["_source"]
    edit(source)
    await engine.client.index(index=index_name, id=doc_id, body=source, refresh=True)


def patch() -> None:
    """Replace the scripted updates of `BaseElasticAndOpenSearchEngine` with plain re-indexes."""
    from argilla_server.search_engine.commons import (
        BaseElasticAndOpenSearchEngine,
        es_index_name_for_dataset,
    )

    async def update_record_response(self: Any, response: Any) -> None:
        record = response.record
        mapped = self._map_record_response_to_es(response)

        def edit(source: dict[str, Any]) -> None:
            kept = [r for r in (source.get("responses") or []) if r.get("id") != mapped["id"]]
            source["responses"] = [*kept, _jsonable(mapped)]

        await _edit_source(self, es_index_name_for_dataset(record.dataset), str(record.id), edit)

    async def delete_record_response(self: Any, response: Any) -> None:
        record = response.record
        response_id = str(response.id)

        def edit(source: dict[str, Any]) -> None:
            responses = source.get("responses") or []
            source["responses"] = [r for r in responses if str(r.get("id")) != response_id]

        await _edit_source(self, es_index_name_for_dataset(record.dataset), str(record.id), edit)

    async def delete_record_suggestion(self: Any, suggestion: Any) -> None:
        name = suggestion.question.name

        def edit(source: dict[str, Any]) -> None:
            (source.get("suggestions") or {}).pop(name, None)

        index_name = es_index_name_for_dataset(suggestion.record.dataset)
        await _edit_source(self, index_name, str(suggestion.record_id), edit)

    BaseElasticAndOpenSearchEngine.update_record_response = update_record_response  # type: ignore[method-assign]
    BaseElasticAndOpenSearchEngine.delete_record_response = delete_record_response  # type: ignore[method-assign]
    BaseElasticAndOpenSearchEngine.delete_record_suggestion = delete_record_suggestion  # type: ignore[method-assign]


def _jsonable(value: Any) -> Any:
    """UUIDs and enums as the strings the JSON serializer of a scripted update would send."""
    import enum
    import uuid

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


# Followed by a JSON list of argument lists on stdin: argilla-server commands run one after
# another in this one process (each start of argilla-server pays seconds of imports), with
# their arguments (passwords, API keys) never in the command line `ps` shows every local user.
COMMANDS_FLAG = "--tuneloop-commands-on-stdin"
# Printed after each command of the list finishes, so the caller knows which ones did.
STEP_DONE = "tuneloop-step-done"


def run_commands(app: object, commands: list[list[str]]) -> int:
    """Run each command with argilla-server's CLI in turn; the first failure's exit code."""
    for index, argv in enumerate(commands):
        code = app(args=[str(a) for a in argv], prog_name="argilla_server",  # type: ignore[operator]
                   standalone_mode=False)  # fmt: skip
        if isinstance(code, int) and code != 0:
            return code
        print(f"{STEP_DONE} {index}", flush=True)
    return 0


def main() -> None:
    """Apply the patch, then run argilla-server's own typer CLI with our argv (or with the
    commands given on stdin)."""
    patch()
    from argilla_server.cli.__main__ import app

    if sys.argv[1:] == [COMMANDS_FLAG]:
        sys.exit(run_commands(app, json.loads(sys.stdin.read())))
    sys.argv[0] = "argilla_server"
    app()


if __name__ == "__main__":
    main()
