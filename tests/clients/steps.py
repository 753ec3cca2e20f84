"""The step loop the enforcement clients share: runs each step named on the command line with
`run(step)` and prints one JSON line per step: {"step", "ok", "error", "ms", "pid"}. A failing
step is reported, not raised: the tests check which calls the policy refused."""
import json
import os
import sys
import time


def main(run):
    for step in sys.argv[1:]:
        t = time.monotonic()
        try:
            run(step)
            res = {"step": step, "ok": True}
        except Exception as e:  # noqa: BLE001 - the test wants every failure reported
            res = {"step": step, "ok": False, "error": f"{type(e).__name__}: {e}"}
        res["ms"] = round((time.monotonic() - t) * 1000, 1)
        res["pid"] = os.getpid()
        print(json.dumps(res), flush=True)
