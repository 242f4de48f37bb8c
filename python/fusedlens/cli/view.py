"""`fusedlens view DIR`: the report.html a command wrote into DIR (its path, or served on this machine only)."""
from __future__ import annotations

import functools
import http.server
import os
import threading
from dataclasses import dataclass

from ..core.fields import option
from ..report.page import REPORT
from .options import add_arguments, from_args

HELP = "the interactive report a command wrote into a folder: print its path, or serve it on 127.0.0.1 (--serve)"
HOST = "127.0.0.1"  # never another interface: a report can hold text a user would not publish


@dataclass(kw_only=True)
class ViewConfig:
    folder: str = option("", "an output folder of a fusedlens command (or its report.html)", positional=True)
    serve: bool = option(False, "serve the folder on 127.0.0.1 until interrupted, instead of printing the path")
    port: int = option(8000, "port for --serve (0: any free port)")


def report_path(folder: str) -> str:
    """The report.html of an output folder (or the file itself), checked."""
    path = folder if folder.endswith(".html") else os.path.join(folder, REPORT)
    if not os.path.exists(folder):
        raise ValueError(f"folder: {folder} not found; give the --out folder of a fusedlens command")
    if not os.path.isfile(path):
        raise ValueError(f"folder: {folder} has no {REPORT}; the commands write one into their --out folder "
                         "(rerun the command with this version)")
    return os.path.abspath(path)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would bury the URL
        pass


def server(folder: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server of the folder bound to 127.0.0.1 (not started: call serve_forever)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port: expected 0..65535, got {port!r}")
    handler = functools.partial(_Quiet, directory=folder)
    try:
        return http.server.ThreadingHTTPServer((HOST, port), handler)
    except OSError as err:
        raise ValueError(f"port: cannot listen on {HOST}:{port} ({err.strerror}); pass another --port, or 0") from None


def main(args) -> int:
    cfg = from_args(ViewConfig, args)
    path = report_path(cfg.folder)
    if not cfg.serve:
        print(path)
        return 0
    httpd = server(os.path.dirname(path), cfg.port)
    print(f"serving {path} at http://{HOST}:{httpd.server_address[1]}/{os.path.basename(path)} (Ctrl-C stops)",
          flush=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.shutdown()
        httpd.server_close()
    return 0


def register(sub) -> None:
    p = sub.add_parser("view", help=HELP)
    add_arguments(p, ViewConfig)
    p.set_defaults(func=main)
