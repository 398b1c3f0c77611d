"""Attack corpus against a real `aicml serve` process on loopback (predict token, control token, canary).

Each case asserts the precise refusal (status and an error body naming the problem) and that nothing
happened: the rollout is not frozen, no prediction was counted, no unexpected Prometheus label set
appeared, and the server still answers ready.

Cases:
 1. no token (MLflow and v2 endpoints)                       -> 401 UNAUTHENTICATED
 2. wrong token; other schemes (Basic, bare token)            -> 401
 3. token of the right length differing in its last character -> 401
 4. the predict token on POST /router/freeze (role)           -> 401 naming the control token; not frozen
 5. the control token on /invocations and /v2/.../infer       -> 401 (it is not a predict credential)
 6. the token in the query string instead of the header       -> 401
 7. body above --max-body-bytes: declared (Content-Length) or streamed chunked (64 MiB) -> 413 naming the
    limit; the server's memory does not grow with what was sent; the same on /router/freeze
 8. more rows than --max-rows                                 -> 413 naming the limit
 9. malformed JSON, 100 000-deep nesting, and 1000-deep values JSON allows (these raised RecursionError
    while the error message was built: a 500, fixed in aicml/serving/inputs.py) -> 400 naming the field
10. wrong content type                                        -> 415 naming it
11. 500 invented routes (DELETE /v2/junk-N) and 500 invented model names (/v2/models/<random>/infer and
    GET /v2/models/<random>) -> one label set each in /metrics, not hundreds
12. path traversal in the model name (/v2/models/..%2f..%2fetc/infer, raw ../)
                                                              -> 404 NOT_FOUND naming the model, no file read
13. header injection: CR, LF, NUL or a folded line in Authorization -> 400 from the HTTP parser, the app never
    sees it; a smuggled second Authorization header does not replace the first -> 401
14. `--no-auth` off loopback is refused by the CLI before it starts: tested in test_serve_cli.py
    (test_no_auth_is_refused_off_loopback), not repeated here.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serving_support import Registered, RunningServer, start_server, stop_server

pytestmark = pytest.mark.timeout(300)

ROW = {"a": 1.0, "b": 2.0, "n": 1}
MAX_BODY = 65_536
MAX_ROWS = 50


@dataclass(frozen=True)
class Attacked:
    server: RunningServer
    control_token: str
    name: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def attacked(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacked]:
    """One server for the whole corpus: a canary rollout (so there is something to freeze), a control token,
    and small limits so that crossing them is cheap."""
    tmp = tmp_path_factory.mktemp("attacks")
    control = secrets.token_urlsafe(24)
    (tmp / "control").write_text(control)
    running = start_server(
        f"models:/{registered.name}@champion",
        tmp,
        "--challenger", f"models:/{registered.name}@challenger",
        "--steps", "0.5",
        "--control-token-file", str(tmp / "control"),
        "--max-body-bytes", str(MAX_BODY),
        "--max-rows", str(MAX_ROWS),
        "--poll-seconds", "0",
    )  # fmt: skip
    attacked = Attacked(running, control, registered.name)
    # Create the label sets of the probes themselves, so that snapshots compare like with like.
    for _ in range(2):
        snapshot(attacked)
    yield attacked
    stop_server(running)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Snapshot:
    frozen: object
    routed: int  # requests the rollout router counted (both arms)
    batches: float  # predict calls the model made
    labels: dict[str, float]  # aicml_http_requests_total label set -> count


def snapshot(target: Attacked) -> Snapshot:
    router = httpx.get(f"{target.url}/router", headers=target.server.headers(), timeout=10).json()
    arms = router["router"]["arms"]
    metrics = httpx.get(f"{target.url}/metrics", timeout=10).text
    labels = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^aicml_http_requests_total\{(.*)\} (\S+)$", metrics, re.MULTILINE)
    }
    batches = sum(
        float(m.group(1))
        for m in re.finditer(r"^aicml_predict_batch_rows_count\{.*\} (\S+)$", metrics, re.MULTILINE)
    )
    return Snapshot(
        router["router"]["frozen"],
        arms["champion"]["requests"] + arms["challenger"]["requests"],
        batches,
        labels,
    )


def label(route: str, status: int) -> str:
    return f'model="serve-test",route="{route}",status="{status}"'


def assert_nothing_happened(target: Attacked, before: Snapshot, *allowed: str) -> Snapshot:
    """No freeze, no prediction, no label set beyond ``allowed``, and the server still ready."""
    after = snapshot(target)
    assert after.frozen is None, f"the rollout was frozen: {after.frozen}"
    assert after.routed == before.routed, "a refused request reached the rollout router"
    assert after.batches == before.batches, "a refused request reached the model"
    probes = {label("/router", 200), label("/metrics", 200)}
    new = set(after.labels) - set(before.labels) - probes
    assert new <= set(allowed), f"unexpected label sets: {new - set(allowed)}"
    assert target.server.process.poll() is None
    assert httpx.get(f"{target.url}/v2/health/ready", timeout=10).status_code == 200
    return after


def assert_refused(response: httpx.Response, status: int, code: str, words: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and words in body["message"], body
    assert "Traceback" not in response.text
    return body


def raw(target: Attacked, request: bytes) -> tuple[int, bytes, bytes]:
    """Send bytes no HTTP client would (they validate headers); return status, head and body."""
    port = int(target.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def raw_post(path: bytes, authorization: bytes, body: bytes = b"") -> bytes:
    body = body or b'{"dataframe_records": [{"a": 1.0, "b": 2.0, "n": 1}]}'
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: " + authorization + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )


# --- the baseline: the right token predicts (so every refusal below is about the attack) ----------------


def test_the_predict_token_predicts(attacked: Attacked, registered: Registered) -> None:
    response = httpx.post(
        f"{attacked.url}/invocations", json={"dataframe_records": [ROW]}, headers=attacked.server.headers()
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0] in (0, 1)
    assert snapshot(attacked).routed >= 1


# --- credentials ----------------------------------------------------------------------------------------


def predict_urls(target: Attacked) -> list[str]:
    return [f"{target.url}/invocations", f"{target.url}/v2/models/{target.name}/infer"]


def v2_body() -> dict[str, object]:
    return {
        "inputs": [
            {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]},
            {"name": "b", "shape": [1], "datatype": "FP64", "data": [2.0]},
            {"name": "n", "shape": [1], "datatype": "INT64", "data": [1]},
        ]
    }


def attempt(target: Attacked, url: str, headers: dict[str, str]) -> httpx.Response:
    payload = v2_body() if url.endswith("/infer") else {"dataframe_records": [ROW]}
    return httpx.post(url, json=payload, headers=headers, timeout=10)


def unauthenticated_labels() -> tuple[str, str]:
    return label("/invocations", 401), label("/v2/models/{name}/infer", 401)


def test_no_token_is_refused(attacked: Attacked) -> None:
    before = snapshot(attacked)
    for url in predict_urls(attacked):
        response = attempt(attacked, url, {})
        assert_refused(response, 401, "UNAUTHENTICATED", "Missing or wrong bearer token")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_nothing_happened(attacked, before, *unauthenticated_labels())


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + "x" * 32,
        "Basic {token}",  # the right secret under another scheme
        "{token}",  # the secret without a scheme
        "Bearer {token}{token}",  # the secret as a prefix
    ],
)
def test_wrong_tokens_are_refused(attacked: Attacked, authorization: str) -> None:
    before = snapshot(attacked)
    header = authorization.format(token=attacked.server.token)
    for url in predict_urls(attacked):
        assert_refused(attempt(attacked, url, {"Authorization": header}), 401, "UNAUTHENTICATED", "wrong")
    assert_nothing_happened(attacked, before, *unauthenticated_labels())


def test_a_token_differing_only_in_its_last_character_is_refused(attacked: Attacked) -> None:
    token = attacked.server.token
    near = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert len(near) == len(token) and near != token
    before = snapshot(attacked)
    for url in predict_urls(attacked):
        assert_refused(attempt(attacked, url, bearer(near)), 401, "UNAUTHENTICATED", "wrong bearer token")
    assert_nothing_happened(attacked, before, *unauthenticated_labels())


def test_the_predict_token_cannot_freeze_the_rollout(attacked: Attacked) -> None:
    before = snapshot(attacked)
    for headers in (attacked.server.headers(), {}, bearer(attacked.control_token[:-1] + "x")):
        response = httpx.post(f"{attacked.url}/router/freeze", json={"action": "rollback"}, headers=headers)
        assert_refused(response, 401, "UNAUTHENTICATED", "Missing or wrong control token")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_nothing_happened(attacked, before, label("/router/freeze", 401))


def test_the_control_token_is_not_a_predict_credential(attacked: Attacked) -> None:
    before = snapshot(attacked)
    for url in predict_urls(attacked):
        response = attempt(attacked, url, bearer(attacked.control_token))
        assert_refused(response, 401, "UNAUTHENTICATED", "Missing or wrong bearer token")
    router = httpx.get(f"{attacked.url}/router", headers=bearer(attacked.control_token))
    assert_refused(router, 401, "UNAUTHENTICATED", "Missing or wrong bearer token")
    assert_nothing_happened(attacked, before, *unauthenticated_labels(), label("/router", 401))


@pytest.mark.parametrize("query", ["access_token={token}", "token={token}", "authorization=Bearer%20{token}"])
def test_a_token_in_the_query_string_is_ignored(attacked: Attacked, query: str) -> None:
    before = snapshot(attacked)
    for url in predict_urls(attacked):
        response = attempt(attacked, f"{url}?{query.format(token=attacked.server.token)}", {})
        assert_refused(response, 401, "UNAUTHENTICATED", "Missing or wrong bearer token")
    freeze = httpx.post(
        f"{attacked.url}/router/freeze?token={attacked.control_token}", json={"action": "promote"}
    )
    assert_refused(freeze, 401, "UNAUTHENTICATED", "control token")
    assert_nothing_happened(attacked, before, *unauthenticated_labels(), label("/router/freeze", 401))


# --- sizes ----------------------------------------------------------------------------------------------


def rss_kib(process_id: int) -> int:
    status = Path(f"/proc/{process_id}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def test_oversize_bodies_are_refused_without_reading_them(attacked: Attacked) -> None:
    headers = {**attacked.server.headers(), "Content-Type": "application/json"}
    before = snapshot(attacked)
    memory = rss_kib(attacked.server.process.pid)

    # Declared: refused from the Content-Length alone.
    declared = httpx.post(f"{attacked.url}/invocations", content=b"x" * (MAX_BODY + 1), headers=headers)
    assert_refused(declared, 413, "REQUEST_TOO_LARGE", f"larger than {MAX_BODY} bytes")
    assert declared.json()["field"] == "body"

    # Streamed without a length (chunked): the server stops keeping it at the cap.
    def stream() -> Iterator[bytes]:
        yield b'{"inputs": ['
        for _ in range(64 * 16):  # 64 MiB
            yield b"1.0," * 16_384
        yield b"1.0]}"

    streamed = httpx.post(f"{attacked.url}/invocations", content=stream(), headers=headers, timeout=60)
    assert_refused(streamed, 413, "REQUEST_TOO_LARGE", f"larger than {MAX_BODY} bytes")
    v2 = httpx.post(
        f"{attacked.url}/v2/models/{attacked.name}/infer", content=stream(), headers=headers, timeout=60
    )
    assert_refused(v2, 413, "REQUEST_TOO_LARGE", f"larger than {MAX_BODY} bytes")
    grown_mib = (rss_kib(attacked.server.process.pid) - memory) / 1024
    assert grown_mib < 16, f"the server grew by {grown_mib:.0f} MiB on 128 MiB it should have dropped"

    # The control endpoint has the same cap, checked after the token: still not frozen.
    freeze = httpx.post(
        f"{attacked.url}/router/freeze",
        content=b'{"action": "rollback", "pad": "' + b"x" * MAX_BODY + b'"}',
        headers={**bearer(attacked.control_token), "Content-Type": "application/json"},
    )
    assert_refused(freeze, 413, "REQUEST_TOO_LARGE", f"larger than {MAX_BODY} bytes")
    assert_nothing_happened(
        attacked,
        before,
        label("/invocations", 413),
        label("/v2/models/{name}/infer", 413),
        label("/router/freeze", 413),
    )


def test_more_rows_than_max_rows_are_refused(attacked: Attacked) -> None:
    before = snapshot(attacked)
    too_many = httpx.post(
        f"{attacked.url}/invocations",
        json={"dataframe_records": [ROW] * (MAX_ROWS + 1)},
        headers=attacked.server.headers(),
    )
    body = assert_refused(too_many, 413, "REQUEST_TOO_LARGE", f"at most {MAX_ROWS}")
    assert body["field"] == "dataframe_records"
    columns = {k: [v] * (MAX_ROWS + 1) for k, v in ROW.items()}
    columnar = httpx.post(
        f"{attacked.url}/invocations", json={"inputs": columns}, headers=attacked.server.headers()
    )
    assert_refused(columnar, 413, "REQUEST_TOO_LARGE", f"at most {MAX_ROWS}")
    assert_nothing_happened(attacked, before, label("/invocations", 413))


# --- malformed bodies ------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "1.0" + "]" * depth


@pytest.mark.parametrize(
    ("path", "body", "field", "words"),
    [
        ("/invocations", '{"dataframe_records": [', "body", "Malformed JSON"),
        ("/invocations", b"\xff\xfe{}", "body", "Malformed JSON"),
        ("/invocations", nested(20_000), "body", "nested too deeply"),
        # DEEP: 1000 levels, within what JSON parsers accept, so the value reaches the column check.
        ("/invocations", '{"dataframe_records": [{"a": DEEP, "b": 1.0, "n": 1}]}', "a", "expected a number"),
        ("/invocations", '{"dataframe_split": {"columns": ["a", "b", "n"], "data": [[DEEP, 1.0, 1]]}}', "a",
         "expected a number"),
        ("/invocations", '{"inputs": {"a": DEEP, "b": [1.0], "n": [1]}}', "a", "expected a number"),
        ("/v2/models/serve-test/infer", '{"inputs": [{"name": "a", "shape": [1], "datatype": DEEP, '
         '"data": [1.0]}]}', "a", "does not fit column type"),
        ("/v2/models/serve-test/infer", '{"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", '
         '"data": DEEP}, {"name": "b", "shape": [1], "datatype": "FP64", "data": [1.0]}, '
         '{"name": "n", "shape": [1], "datatype": "INT64", "data": [1]}]}', "a", "expected a number"),
    ],
)  # fmt: skip
def test_malformed_and_deep_json_is_a_400_naming_the_field(
    attacked: Attacked, path: str, body: str | bytes, field: str, words: str
) -> None:
    before = snapshot(attacked)
    response = httpx.post(
        f"{attacked.url}{path}",
        content=body.replace("DEEP", nested(1000)).encode() if isinstance(body, str) else body,
        headers={**attacked.server.headers(), "Content-Type": "application/json"},
    )
    refused = assert_refused(response, 400, "BAD_REQUEST", words)
    assert refused["field"] == field
    assert len(response.content) < 1000  # the client's value is not echoed back whole
    route = "/invocations" if path == "/invocations" else "/v2/models/{name}/infer"
    assert_nothing_happened(attacked, before, label(route, 400))


def test_a_deep_freeze_body_does_not_freeze(attacked: Attacked) -> None:
    before = snapshot(attacked)
    for body in ('{"action": DEEP}'.replace("DEEP", nested(1000)), nested(20_000), '{"action": "rollback"'):
        response = httpx.post(
            f"{attacked.url}/router/freeze",
            content=body,
            headers={**bearer(attacked.control_token), "Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert response.json()["field"] in ("action", "body")
    assert_nothing_happened(attacked, before, label("/router/freeze", 400))


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/invocations", "application/xml"),
        ("/invocations", "multipart/form-data; boundary=x"),
        ("/v2/models/serve-test/infer", "text/csv"),  # CSV is for /invocations only
    ],
)
def test_a_wrong_content_type_is_a_415_naming_it(attacked: Attacked, path: str, content_type: str) -> None:
    before = snapshot(attacked)
    response = httpx.post(
        f"{attacked.url}{path}",
        content=b"a,b,n\n1.0,2.0,1\n",
        headers={**attacked.server.headers(), "Content-Type": content_type},
    )
    body = assert_refused(response, 415, "UNSUPPORTED_MEDIA_TYPE", repr(content_type))
    assert body["field"] == "content-type"
    route = "/invocations" if path == "/invocations" else "/v2/models/{name}/infer"
    assert_nothing_happened(attacked, before, label(route, 415))


# --- routes, names and metrics ------------------------------------------------------------------------


def test_invented_routes_and_model_names_share_one_label_each(attacked: Attacked) -> None:
    before = snapshot(attacked)
    latency_before = latency_label_sets(attacked)
    statuses: dict[str, set[int]] = {"delete": set(), "infer": set(), "meta": set(), "anon": set()}
    with httpx.Client(base_url=attacked.url, timeout=10) as client:
        for i in range(500):
            name = secrets.token_hex(6)
            statuses["delete"].add(client.delete(f"/v2/junk-{i}").status_code)
            statuses["infer"].add(
                client.post(
                    f"/v2/models/{name}/infer", json=v2_body(), headers=attacked.server.headers()
                ).status_code
            )
            statuses["anon"].add(client.post(f"/v2/models/{name}/infer", json=v2_body()).status_code)
            statuses["meta"].add(client.get(f"/v2/models/{name}").status_code)
        unknown = client.post(
            "/v2/models/no-such-model/infer", json=v2_body(), headers=attacked.server.headers()
        )
    assert statuses == {"delete": {405}, "infer": {404}, "meta": {404}, "anon": {401}}
    assert_refused(unknown, 404, "NOT_FOUND", "Unknown model 'no-such-model'")
    assert unknown.json()["field"] == "name"
    expected = {
        label("unmatched", 405): 500,
        label("/v2/models/{name}/infer", 404): 501,
        label("unmatched", 404): 500,
        label("/v2/models/{name}/infer", 401): 500,
    }
    after = assert_nothing_happened(attacked, before, *expected)
    for key, count in expected.items():
        assert after.labels[key] - before.labels.get(key, 0) == count, key
    # 2001 invented requests: at most the handful of labels above, in the histogram as in the counter.
    assert len(latency_label_sets(attacked) - latency_before) <= 2


def latency_label_sets(target: Attacked) -> set[str]:
    metrics = httpx.get(f"{target.url}/metrics", timeout=10).text
    return set(re.findall(r"^aicml_request_latency_seconds_count\{(.*)\}", metrics, re.MULTILINE))


@pytest.mark.parametrize(
    "target",
    [
        b"/v2/models/..%2f..%2fetc/infer",
        b"/v2/models/..%2F..%2F..%2Fetc%2Fpasswd/infer",
        b"/v2/models/../../etc/passwd/infer",
        b"/v2/models/%2e%2e/%2e%2e/etc/passwd/infer",
    ],
)
def test_path_traversal_in_the_model_name_is_an_unknown_model(attacked: Attacked, target: bytes) -> None:
    before = snapshot(attacked)
    status, _, body = raw(attacked, raw_post(target, b"Bearer " + attacked.server.token.encode()))
    assert status == 404, body
    assert b'"error_code":"NOT_FOUND"' in body and b"Unknown model" in body and b"root:" not in body
    meta, _, meta_body = raw(
        attacked,
        b"GET " + target.removesuffix(b"/infer") + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert meta == 404 and b"root:" not in meta_body
    assert_nothing_happened(attacked, before, label("/v2/models/{name}/infer", 404), label("unmatched", 404))


# --- header injection -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer {token}\rX-Injected: 1",  # bare CR
        b"Bearer nope\nAuthorization: Bearer {token}",  # bare LF smuggling a second header
        b"Bearer {token}\x00",  # NUL
        b"Bearer {token}\r\n X-Injected: 1",  # obsolete line folding
    ],
)
def test_control_characters_in_authorization_are_refused_by_the_parser(
    attacked: Attacked, authorization: bytes
) -> None:
    before = snapshot(attacked)
    header = authorization.replace(b"{token}", attacked.server.token.encode())
    status, head, body = raw(attacked, raw_post(b"/invocations", header))
    assert status == 400 and body == b"Invalid HTTP request received.", body
    assert b"x-injected" not in head.lower()
    # Refused before the application: not even a label set for it.
    after = assert_nothing_happened(attacked, before)
    assert {k: v for k, v in after.labels.items() if "/invocations" in k} == {
        k: v for k, v in before.labels.items() if "/invocations" in k
    }


def test_a_token_with_trailing_whitespace_is_refused(attacked: Attacked) -> None:
    """Compared exactly, never trimmed into a match (HTTP clients refuse to send it: raw bytes)."""
    before = snapshot(attacked)
    for padding in (b" ", b"\t", b" \t "):
        header = b"Bearer " + attacked.server.token.encode() + padding
        status, _, body = raw(attacked, raw_post(b"/invocations", header))
        assert status == 401 and b"Missing or wrong bearer token" in body, body
    assert_nothing_happened(attacked, before, label("/invocations", 401))


def test_a_second_authorization_header_does_not_replace_the_first(attacked: Attacked) -> None:
    before = snapshot(attacked)
    token = attacked.server.token.encode()
    smuggled = b"Bearer " + b"n" * len(token) + b"\r\nAuthorization: Bearer " + token
    status, _, body = raw(attacked, raw_post(b"/invocations", smuggled))
    assert status == 401 and b"Missing or wrong bearer token" in body
    control = b"Bearer " + token + b"\r\nAuthorization: Bearer " + attacked.control_token.encode()
    status, _, body = raw(attacked, raw_post(b"/router/freeze", control, b'{"action": "promote"}'))
    assert status == 401 and b"control token" in body
    assert_nothing_happened(attacked, before, label("/invocations", 401), label("/router/freeze", 401))
