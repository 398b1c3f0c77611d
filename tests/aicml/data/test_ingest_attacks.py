"""Attack corpus for ingest parameters: each case asserts the precise refusal (error type and a message
naming the problem) and that nothing happened (no output written, no request reached a target, no
connection attempted to an address that was refused).

Servers are real (http.server threads on loopback). Traffic never leaves the machine: every socket
connect is recorded, and one to a non-loopback address fails the test instead of being attempted.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.ingest
from aicml.data.connectors import FileConnector, HttpJsonConnector, Partition, connector_for
from aicml.data.integration import run_ingest
from aicml.data.netguard import (
    ForbiddenAddressError,
    ForbiddenSchemeError,
    NetworkPolicy,
    ResponseTooLargeError,
)
from aicml.data.readers import ReadOptions, read_bytes
from aicml.data.safety import InputTooLargeError, OutsideRootsError, UnsafePathError
from aicml.data.sources import parse_source
from aicml.errors import ConfigurationError
from flows.ingestion import IngestParams, build_job

# --- local servers ------------------------------------------------------------------------------


class Recorder:
    """An HTTP server on a loopback address that records every request it gets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.sent = 0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                recorder.requests.append((self.path, dict(self.headers)))
                route = recorder.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                route(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host = host
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def json(self, path: str, body: Any) -> None:
        data = json.dumps(body).encode()

        def route(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)

        self.routes[path] = route

    def redirect(self, path: str, location: str) -> None:
        def route(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(302)
            handler.send_header("Location", location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        self.routes[path] = route

    def endless(self, path: str) -> None:
        """A body that never ends (chunked), until the client hangs up or 512 MiB went out."""

        def route(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            chunk = b" " * 65536
            frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            try:
                handler.wfile.write(b"1\r\n[\r\n")
                while self.sent < 512 * 1024**2:
                    handler.wfile.write(frame)
                    self.sent += len(chunk)
            except OSError:
                pass

        self.routes[path] = route

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder("127.0.0.1")
    yield recorder
    recorder.close()


@pytest.fixture
def other() -> Iterator[Recorder]:
    """A second loopback host (127.0.0.2): not allowlisted unless a test says so."""
    recorder = Recorder("127.0.0.2")
    yield recorder
    recorder.close()


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every TCP connect attempted; one to a non-loopback address fails instead of leaving the machine."""
    import ipaddress

    attempted: list[str] = []
    original = socket.create_connection

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        host = str(address[0])
        attempted.append(host)
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"a connection to {host} was attempted")
        return original(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempted


# --- a deployment's flow run ----------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Settings of a stack whose home is the only data root, as a deployment's flow run sees them
    (set explicitly: a home in the temporary directory would also allow that directory)."""
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / "data").mkdir(parents=True)
    (home / "landing").mkdir()
    outside.mkdir()
    pd.DataFrame({"id": [1, 2], "secret": ["s1", "s2"]}).to_csv(outside / "secret.csv", index=False)
    pd.DataFrame({"id": [1, 2], "x": [0.5, 1.5]}).to_csv(home / "data" / "good.csv", index=False)
    monkeypatch.setenv("AIC_HOME", str(home))
    monkeypatch.setenv("AIC_DATA_ROOTS", str(home))
    monkeypatch.delenv("AIC_INGEST_ALLOWED_HOSTS", raising=False)
    monkeypatch.delenv("AIC_LANDING_DIR", raising=False)
    monkeypatch.setattr(tasks.ingest, "in_deployment", lambda: True)
    monkeypatch.setattr(tasks.ingest, "deployment_name", lambda: "full")
    return {"home": home, "outside": outside, "output": home / "datasets" / "attack"}


def attempt(stack: dict[str, Path], **params: Any) -> Exception:
    """Build and run an ingest job as a deployment's run would; return the refusal. Nothing may
    have been written to the output."""
    params.setdefault("load", "attack")
    params.setdefault("cluster", "sync")
    # Under quarantine an unreadable partition becomes a quarantine entry; fail surfaces the refusal.
    params.setdefault("policy", "fail")
    params.setdefault("derive_suite", False)
    params.setdefault("output", str(stack["output"]))
    with pytest.raises(Exception) as caught:
        job = build_job(IngestParams(**params))
        run_ingest(job)
    assert not Path(params["output"]).exists(), "output was written"
    return caught.value


def test_control_a_file_inside_the_data_root_loads(stack: dict[str, Path]) -> None:
    job = build_job(
        IngestParams(
            load="ok", source=str(stack["home"] / "data" / "good.csv"), cluster="sync", derive_suite=False
        )
    )
    assert run_ingest(job).accepted == 2


# --- path escapes ---------------------------------------------------------------------------------


def test_dotdot_out_of_the_root_is_refused(stack: dict[str, Path]) -> None:
    source = str(stack["home"] / "data" / ".." / ".." / "outside" / "secret.csv")
    error = attempt(stack, source=source)
    assert isinstance(error, OutsideRootsError)
    assert "outside the allowed data roots" in str(error) and str(stack["home"]) in str(error)
    assert "secret.csv" in str(error) and "resolves to" in str(error)


def test_absolute_path_outside_the_roots_is_refused(stack: dict[str, Path]) -> None:
    error = attempt(stack, source=str(stack["outside"] / "secret.csv"))
    assert isinstance(error, OutsideRootsError)
    assert repr(str(stack["outside"] / "secret.csv")) in str(error)


def test_a_missing_file_outside_the_roots_is_refused_not_probed(stack: dict[str, Path]) -> None:
    error = attempt(stack, source="/etc/no-such-file.csv")
    assert isinstance(error, OutsideRootsError), "the refusal must not reveal whether the file exists"


def test_symlink_out_of_the_root_is_refused(stack: dict[str, Path]) -> None:
    link = stack["home"] / "data" / "link.csv"
    link.symlink_to(stack["outside"] / "secret.csv")
    error = attempt(stack, source=str(link))
    assert isinstance(error, OutsideRootsError)
    assert "resolves to" in str(error) and str(stack["outside"]) in str(error)


def test_glob_that_matches_a_symlink_out_of_the_root_is_refused(stack: dict[str, Path]) -> None:
    (stack["home"] / "data" / "zz.csv").symlink_to(stack["outside"] / "secret.csv")
    error = attempt(stack, source=str(stack["home"] / "data" / "*.csv"))
    assert isinstance(error, OutsideRootsError)
    assert "zz.csv" in str(error)


def test_base_dir_outside_the_roots_is_refused(stack: dict[str, Path]) -> None:
    error = attempt(stack, source="secret.csv", base_dir=str(stack["outside"]))
    assert isinstance(error, OutsideRootsError)
    assert str(stack["outside"]) in str(error)


def test_base_dir_narrows_the_roots(stack: dict[str, Path]) -> None:
    (stack["home"] / "other").mkdir()
    (stack["home"] / "other" / "x.csv").write_text("id\n1\n")
    error = attempt(stack, source="../other/x.csv", base_dir=str(stack["home"] / "data"))
    # The roots are narrowed to base_dir: the escape is refused naming that directory as the only root.
    assert isinstance(error, OutsideRootsError)
    assert f"[{str(stack['home'] / 'data')!r}]" in str(error)
    with pytest.raises(UnsafePathError, match=r"'\.\.'"):  # and base_dir alone (outside deployments) too
        FileConnector("../other/x.csv", base_dir=str(stack["home"] / "data")).partitions()


def test_output_outside_the_roots_is_refused(stack: dict[str, Path]) -> None:
    output = stack["outside"] / "written-here"
    error = attempt(stack, source=str(stack["home"] / "data" / "good.csv"), output=str(output))
    assert isinstance(error, OutsideRootsError) and "written-here" in str(error)


def test_pipeline_source_outside_the_roots_is_refused(stack: dict[str, Path]) -> None:
    with pytest.raises(OutsideRootsError, match="outside the allowed data roots"):
        tasks.ingest.ingest(str(stack["outside"] / "secret.csv"))
    assert not (stack["home"] / "snapshots").exists() or not any((stack["home"] / "snapshots").iterdir())


@pytest.mark.parametrize("source", ["ftp://127.0.0.1/x.csv", "memory://x.csv", "file+ssh://host/x.csv"])
def test_remote_schemes_other_than_object_storage_and_http_are_refused(
    stack: dict[str, Path], source: str, connects: list[str]
) -> None:
    error = attempt(stack, source=source)
    assert isinstance(error, ForbiddenSchemeError) and "scheme" in str(error)
    with pytest.raises(ForbiddenSchemeError):
        parse_source(source)
    assert connects == []


# --- landed-file events ---------------------------------------------------------------------------


def test_landed_event_outside_the_landing_directory_is_refused(
    stack: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.ingest, "deployment_name", lambda: "on-file-landed")
    error = attempt(stack, source=str(stack["outside"] / "secret.csv"), incremental=True)
    assert isinstance(error, ConfigurationError)
    assert "not inside the watched landing directory" in str(error)
    assert str(stack["home"] / "landing") in str(error)


def test_landed_event_elsewhere_in_the_data_root_is_refused(
    stack: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.ingest, "deployment_name", lambda: "on-file-landed")
    error = attempt(stack, source=str(stack["home"] / "landing" / ".." / "data" / "good.csv"))
    assert "not inside the watched landing directory" in str(error)


def test_landed_symlink_out_of_the_landing_directory_is_refused(
    stack: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.ingest, "deployment_name", lambda: "on-file-landed")
    link = stack["home"] / "landing" / "orders.csv"
    link.symlink_to(stack["outside"] / "secret.csv")
    error = attempt(stack, source=str(link))
    assert "not inside the watched landing directory" in str(error) and "resolves to" in str(error)


def test_control_landed_file_inside_the_landing_directory_loads(
    stack: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.ingest, "deployment_name", lambda: "on-file-landed")
    landed = stack["home"] / "landing" / "orders.csv"
    landed.write_text("id,x\n1,2.0\n")
    job = build_job(IngestParams(load="landing", source=str(landed), cluster="sync", derive_suite=False))
    assert run_ingest(job).accepted == 1


# --- SSRF -------------------------------------------------------------------------------------------


def test_loopback_literal_is_refused_before_any_connect(
    stack: dict[str, Path], server: Recorder, connects: list[str]
) -> None:
    server.json("/api", {"data": [{"a": 1}]})
    error = attempt(stack, source=server.url("/api"))
    assert isinstance(error, ForbiddenAddressError)
    assert "127.0.0.1 is a loopback address" in str(error) and "AIC_INGEST_ALLOWED_HOSTS" in str(error)
    assert server.requests == [] and connects == []


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://[::1]:9/api", "loopback"),
        ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
        ("http://10.20.30.40/api", "private"),
        ("http://192.168.1.1/api", "private"),
        ("https://172.16.0.1/api", "private"),
        ("http://100.100.100.200/latest/meta-data", "cloud metadata"),
        ("http://[::ffff:127.0.0.1]:9/api", "loopback (IPv4 inside IPv6)"),
        ("http://0.0.0.0:9/api", "unspecified"),
        ("http://224.0.0.1/api", "multicast"),
    ],
)
def test_non_public_literal_addresses_are_refused_before_any_connect(
    stack: dict[str, Path], url: str, kind: str, connects: list[str]
) -> None:
    error = attempt(stack, source=url)
    assert isinstance(error, ForbiddenAddressError), error
    assert kind in str(error)
    # The same through a files source (CSV over http) and through the pipeline's parser.
    with pytest.raises(ForbiddenAddressError, match=kind.split(" (")[0]):
        parse_source(url + ".csv")
    assert connects == []


def test_name_resolving_to_loopback_is_refused(
    stack: dict[str, Path], server: Recorder, connects: list[str]
) -> None:
    server.json("/api", {"data": [{"a": 1}]})
    error = attempt(stack, source=f"http://localhost:{server.port}/api")
    assert isinstance(error, ForbiddenAddressError)
    assert "localhost (resolves to" in str(error) and "loopback" in str(error)
    assert server.requests == [] and connects == []


def test_name_resolving_to_the_metadata_address_is_refused(connects: list[str]) -> None:
    policy = NetworkPolicy(resolver=lambda host, port: ["93.184.215.14", "169.254.169.254"])
    connector = HttpJsonConnector("http://metadata.example.test/latest", network=policy)
    with pytest.raises(ForbiddenAddressError, match=r"metadata.example.test \(resolves to 169.254.169.254\)"):
        connector.read(connector.partitions()[0])
    assert connects == []


def test_redirect_from_an_allowed_server_to_another_loopback_host_is_refused(
    stack: dict[str, Path], server: Recorder, other: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIC_INGEST_ALLOWED_HOSTS", "127.0.0.1")
    other.json("/inner", {"data": [{"a": 1}]})
    server.redirect("/api", other.url("/inner"))
    error = attempt(stack, source=server.url("/api"))
    assert isinstance(error, ForbiddenAddressError) and "127.0.0.2 is a loopback address" in str(error)
    assert [path for path, _ in server.requests] == ["/api"] and other.requests == []


def test_redirect_to_the_metadata_address_is_refused(
    stack: dict[str, Path], server: Recorder, connects: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIC_INGEST_ALLOWED_HOSTS", "127.0.0.1")
    server.redirect("/data.csv", "http://169.254.169.254/latest/meta-data/")
    error = attempt(stack, source=server.url("/data.csv"))
    assert isinstance(error, ForbiddenAddressError) and "cloud metadata" in str(error)
    assert set(connects) == {"127.0.0.1"}


def test_next_link_to_a_private_address_is_refused(
    stack: dict[str, Path], server: Recorder, connects: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIC_INGEST_ALLOWED_HOSTS", "127.0.0.1")
    server.json("/api", {"data": [{"a": 1}], "next": "http://10.0.0.7/page2"})
    error = attempt(stack, source=server.url("/api"))
    assert isinstance(error, ForbiddenAddressError) and "10.0.0.7 is a private address" in str(error)
    assert set(connects) == {"127.0.0.1"}


def test_next_link_to_another_loopback_host_is_refused(
    stack: dict[str, Path], server: Recorder, other: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIC_INGEST_ALLOWED_HOSTS", "127.0.0.1")
    other.json("/p2", {"data": [{"a": 2}]})
    server.json("/api", {"data": [{"a": 1}], "next": other.url("/p2")})
    error = attempt(stack, source=server.url("/api"))
    assert isinstance(error, ForbiddenAddressError) and "127.0.0.2" in str(error)
    assert other.requests == []


def test_credentials_never_follow_a_redirect_or_link_to_another_host(
    server: Recorder, other: Recorder
) -> None:
    other.json("/p2", {"data": [{"a": 2}]})
    other.redirect("/moved", other.url("/p2"))
    server.json("/p1", {"data": [{"a": 1}], "next": "/start"})
    server.redirect("/start", other.url("/moved"))
    policy = NetworkPolicy(allowed_hosts=("127.0.0.1", "127.0.0.2"))
    headers = {"Authorization": "Bearer canary-token", "X-Api-Key": "canary-key"}
    connector = HttpJsonConnector(server.url("/p1"), headers=headers, network=policy)
    frame = connector.read(connector.partitions()[0]).frame
    assert frame["a"].tolist() == [1, 2]
    sent_to_origin = [h for _, h in server.requests]
    assert all(h.get("Authorization") == "Bearer canary-token" for h in sent_to_origin)
    assert len(other.requests) == 2
    for _, sent in other.requests:
        assert "canary" not in json.dumps(sent), sent


def test_endless_response_is_cut_while_streaming(server: Recorder) -> None:
    server.endless("/api")
    policy = NetworkPolicy(allowed_hosts=("127.0.0.1",))
    connector = HttpJsonConnector(server.url("/api"), network=policy, max_bytes=1024**2)
    with pytest.raises(ResponseTooLargeError, match=r"more than the cap of 1048576 bytes; stopped reading"):
        connector.read(connector.partitions()[0])
    assert server.sent < 64 * 1024**2, f"the server got to send {server.sent} bytes"


def test_announced_oversize_response_is_refused_before_reading(server: Recorder) -> None:
    server.json("/api", {"data": ["x" * 4096] * 300})
    policy = NetworkPolicy(allowed_hosts=("127.0.0.1",))
    connector = HttpJsonConnector(server.url("/api"), network=policy, max_bytes=100_000)
    with pytest.raises(ResponseTooLargeError, match=r"announces .* bytes, more than the cap of 100000"):
        connector.read(connector.partitions()[0])


def test_control_allowlisted_http_source_loads(
    stack: dict[str, Path], server: Recorder, monkeypatch: Any
) -> None:
    monkeypatch.setenv("AIC_INGEST_ALLOWED_HOSTS", "127.0.0.1")
    server.json("/api", {"data": [{"a": 1}], "next": "/p2"})
    server.json("/p2", {"data": [{"a": 2}]})
    job = build_job(IngestParams(load="api", source=server.url("/api"), cluster="sync", derive_suite=False))
    assert run_ingest(job).accepted == 2


def test_connector_for_applies_the_operator_policy_to_file_urls(
    server: Recorder, connects: list[str]
) -> None:
    server.json("/x.csv", {"data": []})
    connector = connector_for(server.url("/x.csv"), "files")
    assert isinstance(connector, FileConnector)
    with pytest.raises(ForbiddenAddressError):
        connector.read(Partition(key="k", identity="", location=server.url("/x.csv")))
    assert server.requests == [] and connects == []


# --- Parquet bombs ------------------------------------------------------------------------------------


def _parquet(table: pa.Table, **options: Any) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def test_parquet_decompression_bomb_is_refused_from_its_footer(
    stack: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _parquet(
        pa.table({"x": np.zeros(8_000_000, dtype=np.int64)}), compression="zstd", use_dictionary=False
    )
    assert len(data) < 100_000  # small on disk, 64 MB decoded
    read = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("pages were decompressed"))
    with pytest.raises(InputTooLargeError, match=r"declares 640\d+ bytes uncompressed .* decompression bomb"):
        read_bytes(data, "bomb.parquet", ReadOptions(max_bytes=8 * 1024**2))
    monkeypatch.setattr(pq.ParquetFile, "read", read)
    path = stack["home"] / "data" / "bomb.parquet"
    path.write_bytes(data)
    error = attempt(stack, source=str(path), max_bytes=8 * 1024**2)
    assert isinstance(error, InputTooLargeError) and "bomb.parquet" in str(error)


def test_parquet_dictionary_bomb_is_refused_by_its_decoded_size() -> None:
    data = _parquet(pa.table({"x": np.zeros(8_000_000, dtype=np.int64)}), compression="zstd")
    with pytest.raises(InputTooLargeError, match=r"declares 640\d+ bytes uncompressed"):
        read_bytes(data, "dict.parquet", ReadOptions(max_bytes=8 * 1024**2))


def test_parquet_with_too_many_rows_is_refused_from_its_footer() -> None:
    data = _parquet(pa.table({"x": np.arange(5000)}))
    with pytest.raises(
        InputTooLargeError, match="declares 5000 rows in its Parquet metadata, more than the cap of 1000"
    ):
        read_bytes(data, "rows.parquet", ReadOptions(max_rows=1000))
    assert len(read_bytes(data, "rows.parquet", ReadOptions()).frame) == 5000


# --- default roots ----------------------------------------------------------------------------------


def test_default_roots_are_the_home_and_the_data_volume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aicml.data.safety import configured_roots

    monkeypatch.delenv("AIC_DATA_ROOTS", raising=False)
    monkeypatch.setenv("AIC_HOME", "/srv/aic-home")
    assert configured_roots() == ("/srv/aic-home", "/mnt/data")
    monkeypatch.setenv("AIC_HOME", str(tmp_path / "home"))  # a throwaway stack in the temp directory
    import tempfile

    assert configured_roots()[-1] == str(Path(tempfile.gettempdir()).resolve())
    monkeypatch.setenv("AIC_DATA_ROOTS", "/srv/a, /srv/b")
    assert configured_roots() == ("/srv/a", "/srv/b")
