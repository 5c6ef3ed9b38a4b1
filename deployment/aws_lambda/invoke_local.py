"""Invoke the Lambda handler on event files, as the Lambda runtime would, without AWS or Docker.

    python invoke_local.py EVENT.json [EVENT.json ...]

Prints one line of JSON per event: the handler's response (statusCode, headers, body). Run it
in the bundle folder with the bundle's requirements installed, e.g. to try an event shape.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lambda_function import handler


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    for path in paths:
        event = json.loads(Path(path).read_text())
        print(json.dumps(handler(event, None)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
