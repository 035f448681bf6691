"""Records every look for a top-level module named in $HEAVY_IMPORTS (comma-separated) to the file $HEAVY_IMPORTS_LOG,
one JSON line each: the name, the process's argv, and the file and line that imported it.

Put on PYTHONPATH, Python imports it at start-up in every process, the harness's children included. The
finder only watches: it returns None, so the search goes on as if it were not there. A look counts, found or not:
`import torch` failing in a venv without torch, or an optional `try: import torch`, is recorded too.
"""

import json
import os
import sys
import traceback


class Recorder:
    def __init__(self, names: set[str], log: str) -> None:
        self.names = names
        self.log = log

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if path is None and name in self.names:
            # The innermost frame outside importlib's machinery and this file: who asked.
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith("<frozen")]
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            line = json.dumps({"name": name, "argv": sys.argv, "where": where}) + "\n"
            # One write in append mode: lines from processes running at once do not interleave.
            with open(self.log, "a") as file:
                file.write(line)


if os.environ.get("HEAVY_IMPORTS_LOG"):
    sys.meta_path.insert(0, Recorder(set(os.environ["HEAVY_IMPORTS"].split(",")), os.environ["HEAVY_IMPORTS_LOG"]))
