"""Runs reprscope command lines on hostile inputs in one process, under a memory cap, a time cap per case and an
audit hook that records every file opened and every folder listed; prints one JSON result per case.

    python tests/hostile_driver.py CASES.json

Each case: ``{"name", "argv", "cwd", "env": {...}, "fsize": bytes or null}``. Used by ``test_hostile.py``
(a subprocess, so that the limits and the audit hook never touch the test process).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import sys

CAP_BYTES = 3 << 30  # address space beyond what is mapped at start (torch maps a lot of virtual memory)
TIME_CAP = 60

_events: list = []
_recording = [False]


def _hook(event: str, args: tuple) -> None:
    if not _recording[0]:
        return
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _events.append(("open", os.fsdecode(args[0])))
    elif event in ("os.scandir", "os.listdir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _events.append(("list", os.fsdecode(args[0])))


class _Timeout(Exception):
    pass


def _alarm(*_):
    raise _Timeout()


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    from typer.testing import CliRunner  # noqa: F401  (imports done before the limits)

    from reprscope_cli.main import app

    import torch  # noqa: F401
    sys.addaudithook(_hook)
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + CAP_BYTES, hard))
    out = []
    for case in cases:
        os.chdir(case["cwd"])
        env_old = {k: os.environ.get(k) for k in case.get("env", {})}
        os.environ.update(case.get("env", {}))
        fs_old = resource.getrlimit(resource.RLIMIT_FSIZE)
        if case.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], fs_old[1]))
        _events.clear()
        print(f"case {case['name']}", file=sys.__stderr__, flush=True)
        stdout, stderr = io.StringIO(), io.StringIO()
        code, crash = 0, ""
        _recording[0] = True
        signal.alarm(TIME_CAP)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                app(case["argv"], prog_name="reprscope", standalone_mode=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except _Timeout:
            code, crash = -1, "timeout"
        except BaseException as e:  # noqa: BLE001 - a traceback would have reached the user
            code, crash = -2, f"{type(e).__name__}: {e}"[:500]
        finally:
            signal.alarm(0)
            _recording[0] = False
            resource.setrlimit(resource.RLIMIT_FSIZE, fs_old)
            for k, v in env_old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out.append({"name": case["name"], "code": code, "crash": crash, "stdout": stdout.getvalue()[-2000:],
                    "stderr": stderr.getvalue()[-2000:], "events": sorted(set(_events))})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
