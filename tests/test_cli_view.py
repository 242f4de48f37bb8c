"""`fusedlens view --serve`: loopback only, and one clear line for a port it cannot use (the folder errors are
rows of test_cli_errors.py)."""
import socket

import pytest

from fusedlens.cli import main
from fusedlens.cli.view import HOST, server


def test_serve_binds_loopback_and_names_a_taken_port(tmp_path, capsys):
    (tmp_path / "report.html").write_text("<p>x</p>")
    httpd = server(str(tmp_path), 0)
    try:
        assert httpd.server_address[0] == HOST == "127.0.0.1"
        port = httpd.server_address[1]
        with pytest.raises(ValueError, match=f"port: cannot listen on 127.0.0.1:{port} "):
            server(str(tmp_path), port)
    finally:
        httpd.server_close()
    assert main(["view", str(tmp_path), "--serve", "--port", "70000"]) == 2
    assert "port: expected 0..65535, got 70000" in capsys.readouterr().err
