"""Tests of the test servers themselves: FaultServer's protocol and faults, and the nginx wrapper.

The engine's tests trust these servers, so each fault is checked here with plain requests/http.client
or raw sockets, against the bytes on disk.
"""
from __future__ import annotations

import email.utils
import http.client
import random
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from zoo.testing.faultserver import HTML_ERROR_PAGE, FaultServer, Faults
from zoo.testing.nginxserver import NginxError, NginxServer

SIZE = 256 * 1024


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "root"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(random.Random(1).randbytes(SIZE))
    (d / "other.dat").write_bytes(b"other file\n" * 100)
    (d / "sub" / "b.txt").write_bytes(b"b" * 10)
    (tmp_path / "outside.bin").write_bytes(b"secret")
    return d


@pytest.fixture
def data(root: Path) -> bytes:
    return (root / "a.bin").read_bytes()


@pytest.fixture
def srv(root: Path):
    with FaultServer(root) as s:
        yield s
    assert s.errors == [], "the fault server raised unexpectedly:\n" + "\n".join(s.errors)


def get(srv: FaultServer, rel: str = "a.bin", **headers: str) -> requests.Response:
    return requests.get(srv.url_for(rel), headers=headers, timeout=10)


def raw(srv: FaultServer, method: str, path: str, headers: dict | None = None):
    """One request over http.client, with the path sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    return conn, resp


# -- protocol ------------------------------------------------------------------------------------


def test_full_get_has_validators_and_exact_body(srv, root, data):
    r = get(srv)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Length"] == str(SIZE)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"].startswith('"') and r.headers["ETag"].endswith('"')
    lm = email.utils.parsedate_to_datetime(r.headers["Last-Modified"]).timestamp()
    assert lm == int((root / "a.bin").stat().st_mtime)
    assert srv.stats.requests["a.bin"] == 1
    assert srv.stats.bytes_sent["a.bin"] == SIZE
    assert srv.stats.ranges["a.bin"] == [(0, SIZE - 1)]


@pytest.mark.parametrize("spec, start, end", [
    ("bytes=0-99", 0, 99),
    ("bytes=100-", 100, SIZE - 1),
    ("bytes=-50", SIZE - 50, SIZE - 1),
    ("bytes=10-999999999", 10, SIZE - 1),
    ("bytes=-999999999", 0, SIZE - 1),
    ("bytes=7-7", 7, 7),
])
def test_range_forms_give_exact_206(srv, data, spec, start, end):
    r = get(srv, Range=spec)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert r.headers["Content-Length"] == str(end - start + 1)
    assert r.content == data[start:end + 1]
    assert srv.stats.ranges["a.bin"] == [(start, end)]
    assert srv.stats.bytes_sent["a.bin"] == end - start + 1


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}", "bytes=-0"])
def test_unsatisfiable_range_is_416(srv, spec):
    r = get(srv, Range=spec)
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{SIZE}"
    assert r.content == b""


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=x-"])
def test_multi_or_invalid_range_answers_full_200(srv, data, spec):
    r = get(srv, Range=spec)
    assert r.status_code == 200
    assert r.content == data


def test_head_sends_headers_only_and_keeps_connection(srv):
    conn, resp = raw(srv, "HEAD", "/a.bin")
    assert resp.status == 200 and resp.getheader("Content-Length") == str(SIZE)
    assert resp.read() == b""
    # The next response on the same connection parses cleanly only if HEAD sent no body.
    conn.request("GET", "/other.dat")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"other file\n" * 100
    conn.close()
    assert srv.stats.peak_connections == 1
    assert srv.stats.bytes_sent["a.bin"] == 0 and srv.stats.ranges.get("a.bin") is None


def test_keep_alive_reuses_one_connection(srv, data):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    for start in (0, 1000, 2000):
        conn.request("GET", "/a.bin", headers={"Range": f"bytes={start}-{start + 9}"})
        resp = conn.getresponse()
        assert resp.status == 206 and resp.read() == data[start:start + 10]
    conn.close()
    assert srv.stats.requests["a.bin"] == 3
    assert srv.stats.peak_connections == 1
    assert srv.stats.ranges["a.bin"] == [(0, 9), (1000, 1009), (2000, 2009)]


@pytest.mark.parametrize("path", ["/missing.bin", "/sub", "/sub/", "/", "/../outside.bin",
                                  "/%2e%2e/outside.bin", "/sub/../../outside.bin"])
def test_missing_directories_and_escapes_are_404(srv, path):
    conn, resp = raw(srv, "GET", path)
    assert resp.status == 404
    assert b"secret" not in resp.read()
    conn.close()


def test_symlink_out_of_root_is_404(srv, root):
    (root / "link.bin").symlink_to(root.parent / "outside.bin")
    assert get(srv, "link.bin").status_code == 404


def test_quoted_paths_are_served(srv, root):
    (root / "with space.txt").write_bytes(b"ok")
    r = get(srv, "with space.txt")
    assert r.status_code == 200 and r.content == b"ok"
    assert srv.stats.requests["with space.txt"] == 1


def test_if_range_etag_and_date(srv, data):
    first = get(srv)
    etag, lm = first.headers["ETag"], first.headers["Last-Modified"]
    assert get(srv, Range="bytes=5-9", **{"If-Range": etag}).status_code == 206
    assert get(srv, Range="bytes=5-9", **{"If-Range": lm}).content == data[5:10]
    for stale in ('"0-0"', "W/" + etag, "Mon, 01 Jan 2001 00:00:00 GMT"):
        r = get(srv, Range="bytes=5-9", **{"If-Range": stale})
        assert r.status_code == 200 and r.content == data, stale


# -- faults --------------------------------------------------------------------------------------


def test_reset_after_sends_rst_after_exact_bytes(srv, data):
    srv.set_faults(Faults(reset_after=5000, first_n=1))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /a.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        got, error = b"", None
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError as exc:
            error = exc
    assert error is not None, "expected a TCP reset, got a clean close"
    head, _, body = got.partition(b"\r\n\r\n")
    assert f"Content-Length: {SIZE}".encode() in head
    assert body == data[:len(body)] and len(body) <= 5000
    assert srv.stats.bytes_sent["a.bin"] == 5000
    # first_n=1: the next request is served normally.
    assert get(srv).content == data
    assert srv.faults[0].used == 1


def test_reset_is_a_client_error_in_requests(srv):
    srv.set_faults(Faults(reset_after=100_000))
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        get(srv)


def test_stall_blocks_then_continues(srv, data):
    srv.set_faults(Faults(stall_after=1000, stall_seconds=0.6))
    t0 = time.monotonic()
    r = get(srv)
    assert time.monotonic() - t0 >= 0.5
    assert r.content == data
    # A client with a read timeout sees the silence (the socket stays open, nothing arrives).
    with pytest.raises(requests.exceptions.ConnectionError, match="timed out"):
        requests.get(srv.url_for("a.bin"), timeout=(5, 0.2))


def test_status_sequence_then_normal(srv, data):
    srv.set_faults(Faults(status_sequence=[503, (429, {"Retry-After": "1"})]))
    first, second, third = get(srv), get(srv), get(srv)
    assert first.status_code == 503
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"
    assert third.status_code == 200 and third.content == data
    assert srv.stats.statuses["a.bin"] == [503, 429, 200]


@pytest.mark.parametrize("name, code", [("not_found", 404), ("gone", 410), ("forbidden", 403)])
def test_status_faults_apply_to_get_and_head(srv, name, code):
    srv.set_faults(Faults(**{name: True}))
    assert get(srv).status_code == code
    assert requests.head(srv.url_for("a.bin"), timeout=10).status_code == code
    assert srv.faults[0].used == 2


def test_corrupt_flips_exactly_the_named_bytes(srv, data):
    offsets = [0, 5, 1000, 70_000, SIZE - 1]
    srv.set_faults(Faults(corrupt=offsets))
    body = get(srv).content
    assert len(body) == SIZE
    assert [i for i in range(SIZE) if body[i] != data[i]] == offsets
    assert all(body[i] == data[i] ^ 0xFF for i in offsets)
    part = get(srv, Range="bytes=900-1099").content
    assert [900 + i for i in range(200) if part[i] != data[900 + i]] == [1000]


def test_ignore_range_answers_200_but_advertises_ranges(srv, data):
    srv.set_faults(Faults(ignore_range=True))
    r = get(srv, Range="bytes=100-199")
    assert r.status_code == 200 and r.content == data
    assert r.headers["Accept-Ranges"] == "bytes" and "Content-Range" not in r.headers


def test_change_etag_after_replaces_content(srv, data):
    srv.set_faults(Faults(change_etag_after=1))
    first = get(srv)
    assert first.content == data
    # The client resumes with the old validator: the file changed, so it gets the new full body.
    r = get(srv, Range="bytes=0-9", **{"If-Range": first.headers["ETag"]})
    assert r.status_code == 200
    assert r.content == bytes(b ^ 0x55 for b in data)
    assert r.headers["ETag"] != first.headers["ETag"]
    assert r.headers["Last-Modified"] != first.headers["Last-Modified"]
    r2 = get(srv, Range="bytes=0-9", **{"If-Range": r.headers["ETag"]})
    assert r2.status_code == 206 and r2.content == bytes(b ^ 0x55 for b in data[:10])
    r3 = get(srv, Range="bytes=0-9", **{"If-Range": first.headers["Last-Modified"]})
    assert r3.status_code == 200


def test_change_etag_with_replacement_file(srv, root, data):
    srv.set_faults(Faults(change_etag_after=0, replacement=root / "other.dat"))
    r = get(srv, Range="bytes=-11")
    assert r.status_code == 206
    assert r.headers["Content-Range"] == "bytes 1089-1099/1100"
    assert r.content == b"other file\n"


def test_wrong_content_range_shifts_the_range(srv, data):
    srv.set_faults(Faults(wrong_content_range=7))
    r = get(srv, Range="bytes=100-199")
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 107-206/{SIZE}"
    assert r.content == data[107:207]
    tail = get(srv, Range=f"bytes={SIZE - 10}-")
    assert tail.headers["Content-Range"] == f"bytes {SIZE - 17}-{SIZE - 8}/{SIZE}"
    assert get(srv).status_code == 200  # no Range: nothing to get wrong


def test_html_200_error_page(srv):
    srv.set_faults(Faults(html_200=True))
    r = get(srv, Range="bytes=0-99")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.content == HTML_ERROR_PAGE


def test_short_body_closes_early(srv, data):
    srv.set_faults(Faults(short_body=True))
    conn, resp = raw(srv, "GET", "/a.bin")
    assert resp.getheader("Content-Length") == str(SIZE)
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert info.value.partial == data[:SIZE // 2]
    conn.close()
    assert srv.stats.bytes_sent["a.bin"] == SIZE // 2


def test_rate_limit_holds_roughly(srv, data):
    rate = 1_000_000
    srv.set_faults(Faults(rate_bps=rate))
    t0 = time.monotonic()
    assert get(srv).content == data
    expected = SIZE / rate
    assert time.monotonic() - t0 >= 0.5 * expected


def test_latency_delays_first_byte(srv):
    srv.set_faults(Faults(latency=0.3))
    t0 = time.monotonic()
    assert get(srv, "other.dat").status_code == 200
    assert time.monotonic() - t0 >= 0.25


def test_glob_and_first_n_limit_a_rule(srv, data):
    srv.set_faults(Faults(glob="*.bin", not_found=True, first_n=2))
    assert get(srv, "other.dat").status_code == 200
    assert [get(srv).status_code for _ in range(3)] == [404, 404, 200]
    assert srv.faults[0].used == 2
    srv.faults[0].reset()
    assert get(srv).status_code == 404


def test_head_does_not_use_up_a_body_fault(srv):
    srv.set_faults(Faults(reset_after=10, first_n=1))
    assert requests.head(srv.url_for("a.bin"), timeout=10).status_code == 200
    assert srv.faults[0].used == 0
    with pytest.raises(requests.exceptions.RequestException):
        get(srv)
    assert srv.faults[0].used == 1


def test_rules_merge_first_setting_wins(srv, data):
    srv.set_faults(Faults(status_sequence=[503]), Faults(corrupt=[3], first_n=1), Faults(corrupt=[4]))
    assert get(srv).status_code == 503  # a status answer does not use up the body-fault rules
    bodies = [get(srv).content for _ in range(2)]
    assert [[i for i in range(SIZE) if b[i] != data[i]] for b in bodies] == [[3], [4]]
    assert [rule.used for rule in srv.faults] == [3, 1, 2]  # every live matching rule applies


def test_faults_change_at_runtime(srv, data):
    rule = Faults()
    srv.set_faults(rule)
    assert get(srv).status_code == 200
    rule.update(forbidden=True)
    assert get(srv).status_code == 403
    srv.set_faults()
    assert get(srv).content == data
    with pytest.raises(AttributeError, match="no setting"):
        rule.update(not_a_fault=1)


def test_counters_track_concurrent_connections(srv, data):
    srv.set_faults(Faults(stall_after=0, stall_seconds=0.5))
    results = []
    threads = [threading.Thread(target=lambda: results.append(get(srv).content)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [data] * 3
    assert srv.stats.peak_connections >= 3
    assert srv.stats.requests["a.bin"] == 3
    assert srv.stats.bytes_sent["a.bin"] == 3 * SIZE
    srv.stats.reset()
    assert srv.stats.requests["a.bin"] == 0 and srv.stats.bytes_sent == {}


# -- stopping ------------------------------------------------------------------------------------


def test_stop_is_prompt_while_a_client_is_stalled(root):
    server = FaultServer(root, faults=Faults(stall_after=1000, stall_seconds=30)).start()
    errors = []

    def client():
        try:
            requests.get(server.url_for("a.bin"), timeout=20)
        except requests.RequestException as exc:
            errors.append(exc)

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 5
    while server.stats.bytes_sent["a.bin"] < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 2
    t.join(5)
    assert not t.is_alive() and len(errors) == 1
    assert server.stats.connections == 0


def test_stop_is_prompt_while_a_client_does_not_read(root):
    big = root / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(64 << 20)  # sparse: no disk cost, more than the socket buffers hold
    server = FaultServer(root).start()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 5
        while server.stats.bytes_sent["big.bin"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # let the socket buffers fill, so the server thread blocks in sendfile
        t0 = time.monotonic()
        server.stop()
        assert time.monotonic() - t0 < 2
    assert server.stats.bytes_sent["big.bin"] < 64 << 20
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.url_for("a.bin"), timeout=2)


def test_stop_is_prompt_with_an_idle_keep_alive_connection(root):
    server = FaultServer(root).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/other.dat")
    assert conn.getresponse().read() == b"other file\n" * 100
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 2
    assert server.stats.connections == 0
    conn.close()


def test_wait_idle_after_a_client_gives_up(srv):
    srv.set_faults(Faults(stall_after=1000, stall_seconds=0.8))
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(srv.url_for("a.bin"), timeout=(5, 0.1))
    assert srv.stats.in_flight == 1  # still stalling for a client that left
    assert srv.stats.wait_idle(5)
    assert srv.stats.in_flight == 0


def test_two_servers_share_a_root_as_mirrors(root, data):
    with FaultServer(root) as m1, FaultServer(root, faults=Faults(not_found=True)) as m2:
        assert m1.port != m2.port
        assert get(m1).content == data
        assert get(m2).status_code == 404


# -- nginx ---------------------------------------------------------------------------------------


def test_nginx_serves_ranges(root, data):
    with NginxServer(root) as ng:
        r = requests.get(ng.url_for("a.bin"), headers={"Range": "bytes=100-199"}, timeout=10)
        assert r.status_code == 206
        assert r.headers["Content-Range"] == f"bytes 100-199/{SIZE}"
        assert r.content == data[100:200]
        ranged = lambda spec: requests.get(ng.url_for("a.bin"), headers={"Range": spec}, timeout=10)  # noqa: E731
        assert ranged("bytes=-10").content == data[-10:]
        assert ranged(f"bytes={SIZE}-").status_code == 416
        full = requests.get(ng.url_for("a.bin"), timeout=10)
        assert full.status_code == 200 and full.content == data
        assert requests.get(ng.url_for("sub/"), timeout=10).status_code in (403, 404)  # no listing
        url = ng.url
    assert ng.access_log()[0] == 'GET /a.bin 206 100 "bytes=100-199"'
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=2)


def test_nginx_limit_rate(root, data):
    # nginx lets the first second's worth of bytes through at once, so expect (size / rate - 1) s.
    with NginxServer(root, limit_rate="128k") as ng:
        t0 = time.monotonic()
        assert requests.get(ng.url_for("a.bin"), timeout=10).content == data
        assert time.monotonic() - t0 >= 0.5 * (SIZE / (128 * 1024) - 1)


def test_nginx_missing_binary_is_a_clear_error(root):
    with pytest.raises(NginxError, match="apt-get install nginx"):
        NginxServer(root, nginx="/nonexistent/nginx")


def test_nginx_port_in_use_is_a_clear_error(root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        ng = NginxServer(root, port=s.getsockname()[1], startup_timeout=3)
        try:
            with pytest.raises(NginxError, match="did not start.*Address already in use"):
                ng.start()
        finally:
            ng.stop()  # never leak an nginx if this test fails
