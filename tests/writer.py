"""A distillation process in miniature: saves a session and outcomes through the client.

Run as ``python writer.py ADDRESS WRITER_ID COUNT MODE TIMEOUT``; prints each
acknowledged edit id on its own line, flushed, the moment the ack arrives (sync
mode) or when the pipeline drains (pipeline mode). Exits 0 when all were acked,
3 when the daemon went away (the acked lines printed so far are still true).
"""

from __future__ import annotations

import sys

from daemon_helpers import EDIT, outcome, session

from sessionstore import SessionStoreClient
from sessionstore.errors import DaemonUnavailable, PipelineError


def main() -> int:
    address, writer, count, mode, timeout = sys.argv[1:6]
    client = SessionStoreClient(address, timeout=float(timeout))
    session_id = f"writer-{writer}"
    try:
        client.save_session(session(session_id, int(writer)))
        if mode == "sync":
            for i in range(int(count)):
                edit_id = f"{session_id}-{i:06d}"
                client.save_outcome(session_id, outcome(edit_id), **EDIT)
                print(edit_id, flush=True)
        else:
            edit_ids = [f"{session_id}-{i:06d}" for i in range(int(count))]
            with client.pipeline() as pipe:
                for edit_id in edit_ids:
                    pipe.save_outcome(session_id, outcome(edit_id), **EDIT)
            print("\n".join(edit_ids), flush=True)
    except (DaemonUnavailable, PipelineError) as err:
        print(f"writer {writer}: {err}", file=sys.stderr)
        return 3
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
