"""nst-jax serve: the job API over real HTTP (a live server on a free port), without a browser."""

import http.cookiejar
import io
import json
import threading
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the ui extra (starlette, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the ui extra (starlette, uvicorn) is not installed")

from nst_jax import jobs as jobs_module
from nst_jax import runner, serve, vgg

# Every run at one shape and one set of static settings: the suite compiles the loop once.
QUICK = {"size": 32, "num_steps": 20, "num_scales": 1}
# max_steps above the page's default (1000): some runs must run until they are cancelled.
LIMITS = jobs_module.Limits(max_size=64, max_upload_bytes=200_000, max_upload_pixels=1_000_000, max_steps=10**6)


def png(h, w, seed=0, fmt="PNG") -> bytes:
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def start_server(params, limits=LIMITS, host="127.0.0.1"):
    """A live server on a free port in a thread; returns its :class:`serve.Running` and the thread."""
    holder, started = [], threading.Event()

    def ready(running):
        holder.append(running)
        started.set()

    sock = serve.bind(host, 0)
    thread = threading.Thread(
        target=serve.serve, args=(params, host, 0, limits), kwargs={"sock": sock, "ready": ready}, daemon=True
    )
    thread.start()
    assert started.wait(60), "the server did not start"
    return holder[0], thread


@pytest.fixture(scope="module")
def server():
    params = vgg.init_params(jax.random.key(0))
    running, thread = start_server(params)
    yield running
    running.stop()
    thread.join(30)


class Client:
    """One browser: its own cookie jar (so its own session)."""

    def __init__(self, url: str):
        self.url = url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.page = self.request("GET", "")

    def request(self, method, path, body=None, headers=None, post_header=True):
        headers = dict(headers or {})
        if method == "POST" and post_header:
            headers.setdefault("X-NST-JAX", "1")
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method, path, data=None, **kwargs):
        body = None if data is None else json.dumps(data).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        status, _, content = self.request(method, path, body, headers, **kwargs)
        return status, json.loads(content)

    def upload(self, data: bytes, name="photo.png"):
        status, _, content = self.request(
            "POST", "api/uploads", data, {"Content-Type": "image/png", "X-Filename": name}
        )
        return status, json.loads(content)

    def submit(self, content_id, style_ids, settings=QUICK, **extra):
        request = {"content": content_id, "styles": style_ids, "settings": settings, **extra}
        return self.json("POST", "api/jobs", request)

    def jobs(self):
        return self.json("GET", "api/jobs")[1]

    def wait(self, job_id, states=("done", "failed", "cancelled"), timeout=120, until=None):
        end = time.time() + timeout
        while time.time() < end:
            job = next(j for j in self.jobs()["jobs"] if j["id"] == job_id)
            if job["state"] in states or (until is not None and until(job)):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url)


@pytest.fixture(scope="module")
def images(client):
    """A content and a style image uploaded by ``client``."""
    status, content = client.upload(png(24, 32, 0), "tübingen.png")
    assert status == 201, content
    status, style = client.upload(png(40, 40, 1), "starry.png")
    assert status == 201, style
    return content, style


def test_page_sets_a_session_and_the_static_files_are_the_packages(server, client):
    status, headers, body = client.page
    assert status == 200 and b"<title>nst-jax" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    cookie = next(c for c in client.opener.handlers if isinstance(c, urllib.request.HTTPCookieProcessor)).cookiejar
    (session,) = [c for c in cookie if c.name == serve.COOKIE]
    assert session.has_nonstandard_attr("HttpOnly") and session.get_nonstandard_attr("SameSite").lower() == "strict"
    status, headers, body = client.request("GET", "static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"EventSource" in body
    for path in ("static/index.html", "static/..%2Fjobs.py", "static/%2e%2e/serve.py", "api/../jobs.py"):
        assert client.request("GET", path)[0] == 404, path


def test_options_come_from_the_config_and_hide_what_names_server_files(client):
    status, data = client.json("GET", "api/options")
    assert status == 200
    names = [o["name"] for o in data["options"]]
    assert names[: len(jobs_module.COMMON_FIELDS)] == list(jobs_module.COMMON_FIELDS)
    assert not {"weights", "save_every", "checkpoint_every", "network"} & set(names)
    size = next(o for o in data["options"] if o["name"] == "size")
    assert size["default"] == 512 and size["kind"] == "int" and "long side" in size["help"]
    init = next(o for o in data["options"] if o["name"] == "init")
    assert init["choices"] == ["content", "noise", "style"]
    assert data["limits"]["max_size"] == 64 and data["limits"]["max_upload_bytes"] == 200_000
    assert data["device"].startswith("CPU, ") and data["device"].endswith(" cores")


def test_requests_without_session_header_or_right_host_are_refused(server, client, images):
    stranger = urllib.request.build_opener()  # no cookie
    with pytest.raises(urllib.error.HTTPError) as e:
        stranger.open(server.url + "api/jobs")
    assert e.value.code == 403 and b"no session: reload the page" in e.value.read()
    # A page on another site can post a form but not add our header: refused before anything is read.
    status, body = client.json("POST", "api/jobs", {"content": images[0]["id"]}, post_header=False)
    assert status == 403 and "X-NST-JAX" in body["error"]
    # DNS rebinding: a foreign name that resolves to 127.0.0.1 is not this server.
    status, _, body = client.request("GET", "api/jobs", headers={"Host": "evil.example:80"})
    assert status == 400 and b"not 'evil.example'" in body
    # A cookie this server never issued is no session.
    status, _, _ = client.request("GET", "api/options", headers={"Cookie": f"{serve.COOKIE}=made-up"})
    assert status == 403


def test_uploads_are_checked_before_anything_is_kept(server, client):
    kept = lambda: sorted(p.name for p in server.jobs.folder.iterdir())
    before = kept()
    cases = [
        (b"not an image at all", 400, "'notes.txt' is not a readable image"),
        (b"", 400, "is empty"),
        (png(24, 32)[:200], 400, "'cut.png'"),  # truncated
        (_flat_png(1200, 1000), 400, "this server takes images up to 1 megapixels"),
        (np.random.default_rng(0).bytes(250_000), 413, "this server takes images up to 0.2 MB"),
    ]
    names = ["notes.txt", "x.png", "cut.png", "big.png", "noise.png"]
    for (data, code, message), name in zip(cases, names, strict=True):
        status, body = client.upload(data, name)
        assert status == code and message in body["error"], (name, status, body)
    assert kept() == before  # nothing stored, not even the raw bytes
    # A header that claims a huge image is refused from the header: nothing is decoded.
    status, body = client.upload(_png_header_only(30000, 30000), "bomb.png")
    assert status == 400 and ("30000 x 30000" in body["error"] or "megapixels" in body["error"]), body
    # The client's name is only a label: a path in it never reaches the disk.
    status, body = client.upload(png(16, 16), "../../etc/passwd")
    assert status == 201 and body["name"] == "../../etc/passwd"
    new = set(kept()) - set(before)
    assert len(new) == 1 and new.pop().startswith("image-")  # our own PNG, under our own name
    status, headers, data = client.request("GET", f"api/uploads/{body['id']}/thumbnail.png")
    assert status == 200 and headers["content-type"] == "image/png" and Image.open(io.BytesIO(data)).size == (16, 16)


def _flat_png(w, h) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _png_header_only(w, h) -> bytes:
    import struct
    import zlib

    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"weights": "/etc/passwd"}, "`weights` cannot be set from the page"),
        ({"init": "/etc/passwd"}, "`init` must be one of content, noise, style"),
        ({"save_every": 1}, "`save_every` cannot be set from the page"),
        ({"bogus": 1}, "unknown setting 'bogus'; valid settings are size, num_steps"),
        ({"size": 4096}, "`size` 4096 is over this server's largest, 64 (its --max-size)"),
        ({"size": "big"}, "`size` must be a int, got 'big'"),
        ({"size": 32.5}, "`size` must be a int"),
        ({"pooling": "mean"}, "`pooling` must be one of"),
        ({"style_weight": -1}, "`style_weight` must be a finite number in [0, 1e+12]"),
        ({"style_layers": "relu9_9"}, "relu9_9"),
        ({**QUICK, "size": 16}, "smaller than layer"),
    ],
)
def test_bad_settings_are_answered_at_once_naming_the_setting(client, images, settings, message):
    status, body = client.submit(images[0]["id"], [images[1]["id"]], settings)
    assert status == 400 and message in body["error"], body


def test_a_run_reports_progress_then_its_result(server, client, images):
    status, job = client.submit(images[0]["id"], [images[1]["id"]], {**QUICK, "chunk_size": 5})
    assert status == 201 and job["state"] in ("queued", "running")
    seen = []
    done = client.wait(job["id"], until=lambda j: seen.append(j["progress"].get("step")) and False)
    assert done["state"] == "done", done
    steps = [s for s in seen if s is not None]
    assert steps and steps == sorted(steps)  # progress came between chunks
    assert done["summary"]["steps"] == 20 and done["has_result"] and done["settings"]["size"] == 32
    status, headers, data = client.request("GET", f"api/jobs/{job['id']}/result.png")
    assert status == 200 and headers["content-type"] == "image/png"
    assert "attachment" in headers["content-disposition"] and ".png" in headers["content-disposition"]
    assert Image.open(io.BytesIO(data)).size == (32, 24)  # the content's aspect at the asked size
    status, _, preview = client.request("GET", f"api/jobs/{job['id']}/preview.png")
    assert status == 200 and preview == data
    kept = server.jobs.jobs[job["id"]].result  # a finished run's image waits on disk, not in memory
    assert kept.parent == server.jobs.folder and kept.read_bytes() == data


def test_the_event_stream_sends_snapshots_as_runs_move(server, client, images):
    request = urllib.request.Request(server.url + "api/events")
    with client.opener.open(request, timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        first = json.loads(stream.readline().decode().removeprefix("data: "))
        assert "jobs" in first and "others_queued" in first
        # long enough to be seen running between two looks of the stream (0.2 s apart)
        status, job = client.submit(images[0]["id"], [images[1]["id"]], {**QUICK, "num_steps": 60})
        assert status == 201
        states = set()
        while "done" not in states:
            line = stream.readline().decode()
            if line.startswith("data: "):
                snapshot = json.loads(line.removeprefix("data: "))
                states |= {j["state"] for j in snapshot["jobs"] if j["id"] == job["id"]}
        assert {"running", "done"} <= states


def test_cancel_a_running_and_a_queued_run(client, images):
    long = {**QUICK, "num_steps": 100000, "chunk_size": 5}
    _, running = client.submit(images[0]["id"], [images[1]["id"]], long)
    _, queued = client.submit(images[0]["id"], [images[1]["id"]], long)
    assert client.wait(running["id"], until=lambda j: j["progress"].get("step", 0) > 0)["state"] == "running"
    listed = {j["id"]: j for j in client.jobs()["jobs"]}
    assert listed[queued["id"]]["state"] == "queued" and listed[queued["id"]]["position"] == 0
    status, body = client.json("POST", f"api/jobs/{queued['id']}/cancel")
    assert status == 200 and body["state"] == "cancelled"
    status, body = client.json("POST", f"api/jobs/{running['id']}/cancel")
    assert status == 200
    job = client.wait(running["id"], timeout=60)
    assert job["state"] == "cancelled" and not job["has_result"] and job["has_preview"]
    assert client.request("GET", f"api/jobs/{running['id']}/result.png")[0] == 404


def test_a_sweep_fills_its_grid_and_downloads_the_labelled_sheet(client, images):
    status, job = client.submit(
        images[0]["id"], [images[1]["id"]], {**QUICK, "num_steps": 10}, kind="sweep", vary="style_weight=1,100"
    )
    assert status == 201 and job["labels"] == ["style_weight=1", "style_weight=100"], job
    done = client.wait(job["id"])
    assert done["state"] == "done" and done["members"] == [True, True], done
    for k in (0, 1):
        status, _, data = client.request("GET", f"api/jobs/{job['id']}/members/{k}.png")
        assert status == 200 and Image.open(io.BytesIO(data)).size == (32, 24)
    assert client.request("GET", f"api/jobs/{job['id']}/members/2.png")[0] == 404
    status, _, sheet = client.request("GET", f"api/jobs/{job['id']}/result.png")
    assert status == 200 and Image.open(io.BytesIO(sheet)).width > 64
    status, body = client.submit(images[0]["id"], [images[1]["id"]], QUICK, kind="sweep", vary="alpha=1,2")
    assert status == 400 and "`vary` has unknown axis 'alpha'" in body["error"]
    nine = "seed=" + ",".join("012345678")
    status, body = client.submit(images[0]["id"], [images[1]["id"]], QUICK, kind="sweep", vary=nine)
    assert status == 400 and "up to 8" in body["error"]
    status, body = client.submit(images[0]["id"], [images[1]["id"]], QUICK, kind="sweep", vary="style")
    assert status == 400 and "two style images" in body["error"]


def test_pages_share_the_queue_but_never_each_others_images_or_results(server, client, images):
    other = Client(server.url)
    assert other.jobs()["jobs"] == []  # another browser starts with an empty list
    _, mine = client.submit(images[0]["id"], [images[1]["id"]], {**QUICK, "num_steps": 100000})
    client.wait(mine["id"], states=("running",))
    status, body = other.submit(images[0]["id"], [images[1]["id"]])  # my image ids are not the other's
    assert status == 404 and "no image" in body["error"]
    _, content = other.upload(png(24, 32, 5))
    _, style = other.upload(png(40, 40, 6))
    status, theirs = other.submit(content["id"], [style["id"]])
    assert status == 201
    snapshot = other.jobs()
    assert [j["id"] for j in snapshot["jobs"]] == [theirs["id"]] and snapshot["others_running"]
    assert snapshot["jobs"][0]["position"] == 0  # waiting for my run: the device is shared
    for path in (f"api/jobs/{mine['id']}/preview.png", f"api/jobs/{mine['id']}/result.png",
                 f"api/uploads/{images[0]['id']}/thumbnail.png"):  # fmt: skip
        status, _, body = other.request("GET", path)
        assert status == 404 and b"on this page" in body, path
    assert other.json("POST", f"api/jobs/{mine['id']}/cancel")[0] == 404
    # A second tab of the same browser shares the cookie, so it sees my runs.
    assert mine["id"] in [j["id"] for j in client.jobs()["jobs"]]
    assert client.json("POST", f"api/jobs/{mine['id']}/cancel")[0] == 200
    assert other.wait(theirs["id"])["state"] == "done"


def test_stopping_removes_every_upload_and_result():
    params = vgg.init_params(jax.random.key(0))
    running, thread = start_server(params)
    client = Client(running.url)
    assert client.upload(png(24, 32))[0] == 201
    folder = running.jobs.folder
    assert any(folder.iterdir())
    running.stop()
    thread.join(30)
    assert not thread.is_alive() and not folder.exists()


def test_cli_serve_checks_before_listening(capsys):
    from conftest import one_line_error

    one_line_error(capsys, ["serve", "--port", "70000"], "--port must be in 0..65535, got 70000")
    one_line_error(capsys, ["serve", "--max-size", "8"], "--max-size must be in 16..16384, got 8")
    busy = serve.bind("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        one_line_error(capsys, ["serve", "--port", str(port)], f"--port {port}: cannot listen there")
    finally:
        busy.close()


def test_cli_serve_warns_when_every_interface_is_served(capsys):
    from nst_jax import cli

    busy = serve.bind("0.0.0.0", 0)
    try:
        assert cli.main(["serve", "--host", "0.0.0.0", "--port", str(busy.getsockname()[1])]) == 2
    finally:
        busy.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("nst-jax: warning: --host 0.0.0.0 makes the page reachable from other machines")
    assert err[1].startswith("nst-jax: error: --host 0.0.0.0 --port")


def test_allowed_hosts():
    assert serve.allowed_hosts_for("127.0.0.1") == ("127.0.0.1", "localhost", "::1")
    assert serve.allowed_hosts_for("0.0.0.0") is None
    assert serve.allowed_hosts_for("192.168.1.5") == ("192.168.1.5",)


def test_cli_serve_runs_until_ctrl_c_then_removes_its_folder(tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys

    from nst_jax.weights import save_params

    weights = save_params(vgg.init_params(jax.random.key(0)), tmp_path / "weights")
    env = {**os.environ, "TMPDIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_jax", "serve", "--port", "0", "--weights", str(weights)],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stderr.readline()
        url = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        assert url, line
        client = Client(url[1])
        assert client.page[0] == 200 and client.upload(png(24, 32))[0] == 201
        (folder,) = tmp_path.glob("nst-jax-serve-*")
        assert any(folder.iterdir())
    finally:
        process.send_signal(signal.SIGINT)
        status, rest = process.wait(60), process.stderr.read()
        process.stderr.close()
    assert status == 0 and rest.strip().endswith("nst-jax: stopped; its uploads and results are removed"), rest
    assert not list(tmp_path.glob("nst-jax-serve-*"))  # uploads and results went with the server


def test_the_whole_runs_share_and_time_left_weigh_each_stage_by_its_pixels():
    from nst_jax.config import StyleConfig

    config = StyleConfig(num_steps=150, coarse_steps=200, base_size=128, num_scales=3)
    costs = runner.stage_costs(config, 512)  # 128, 256, 512 px
    assert costs == [(200, 1 / 16), (200, 1 / 4), (150, 1.0)]
    total = 200 / 16 + 200 / 4 + 150
    fraction, eta = runner.run_estimate(costs, 1, 0.5, steps_per_second=2.0)
    assert fraction == pytest.approx((200 / 16 + 100 / 4) / total)
    # 100 steps left here at 0.5 s each, then 150 steps at 4x the pixels: 2 s each.
    assert eta == pytest.approx(100 * 0.5 + 150 * 2.0)
    assert runner.run_estimate(costs, 2, 1.0, steps_per_second=1.0) == (1.0, 0.0)
    assert runner.run_estimate(costs, 0, 0.0) == (0.0, None)  # no speed yet: compiling
    ladder = [(120, 0.25), (120, (362 / 512) ** 2), (120, 1.0)]  # the defaults: 256, 362, 512 px
    assert runner.stage_costs(StyleConfig(num_steps=120), 512) == ladder


def test_cli_serve_without_the_ui_extra_says_how_to_get_it(capsys, monkeypatch):
    import sys

    from conftest import one_line_error

    import nst_jax

    for name in [n for n in sys.modules if n == "starlette" or n.startswith("starlette.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "nst_jax.serve")
    monkeypatch.delattr(nst_jax, "serve")
    # (a --port that is refused later: were the import to succeed, this would not start a server)
    one_line_error(capsys, ["serve", "--port", "70000"], "): pip install 'nst-jax[ui]'")


# --- Abuse (issue 25): malformed numbers are 400s naming the setting, bodies are bounded
# before they are read, and silent or stalled connections are closed.


def raw_submit(client, text: str):
    return client.request("POST", "api/jobs", text.encode(), {"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('{"size": NaN}', "not valid JSON (NaN is not a JSON number)"),
        ('{"num_steps": Infinity}', "not valid JSON (Infinity is not a JSON number)"),
        ('{"seed": 1e999}', "`seed` must be a int, got inf"),
        ('{"size": 1e308}', "`size` must be an integer in [16, 16384], got 1"),
        ('{"style_weight": 1' + "0" * 400 + "}", "`style_weight` must be a float, got 1000"),
        ('{"memory_size": 2147483648}', "`memory_size` must be an integer in [1, 100], got 2147483648"),
        ('{"memory_size": 50000}', "`memory_size` must be an integer in [1, 100]"),
        ('{"num_steps": 2147483648}', "`num_steps` must be an integer in [0, 1000000]"),
        ('{"num_steps": 1' + "0" * 5000 + "}", "not valid JSON"),  # past Python's 4300 digits
        ('{"size": ' + "[" * 10000 + "]" * 10000 + "}", "the request nests too deeply"),
    ],
)
def test_malformed_numbers_are_answered_400_naming_the_setting(client, images, settings, message):
    text = f'{{"content": "{images[0]["id"]}", "styles": ["{images[1]["id"]}"], "settings": {settings}}}'
    status, _, body = raw_submit(client, text)
    assert status == 400 and message in json.loads(body)["error"], body


def test_a_member_number_of_5000_digits_is_404_not_500(client, server):
    path = "api/jobs/" + "a" * 16 + "/members/" + "9" * 5000 + ".png"
    assert client.request("GET", path)[0] == 404
    stranger = urllib.request.Request(server.url + path)  # no cookie: refused before anything is parsed
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(stranger, timeout=30)
    e.value.close()
    assert e.value.code == 403


def raw_connection(server):
    import socket
    from urllib.parse import urlparse

    address = urlparse(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=20)


def cookie_of(client) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.jar)


def read_all(connection) -> bytes:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def test_a_body_over_the_cap_is_refused_from_its_header_before_it_is_sent(server, client):
    head = (
        f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-NST-JAX: 1\r\n"
        f"Cookie: {cookie_of(client)}\r\nContent-Length: 200000000\r\nConnection: close\r\n\r\n"
    )
    with raw_connection(server) as connection:
        connection.sendall(head.encode())  # and no body at all
        answer = read_all(connection)
    assert answer.startswith(b"HTTP/1.1 413") and b"over 64 kB" in answer, answer[:300]


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: "])
def test_a_silent_or_half_sent_request_is_closed(server, monkeypatch, sent):
    monkeypatch.setattr(serve, "_HEAD_TIMEOUT", 0.5)
    with raw_connection(server) as connection:
        start = time.monotonic()
        connection.sendall(sent)
        assert read_all(connection) == b""  # closed by the server, without an answer
    assert time.monotonic() - start < 10


def test_a_stalled_upload_is_answered_408_and_closed(server, client, monkeypatch):
    monkeypatch.setattr(serve, "_READ_STALL", 0.5)
    head = (
        f"POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nX-NST-JAX: 1\r\n"
        f"Cookie: {cookie_of(client)}\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
    )
    with raw_connection(server) as connection:
        connection.sendall(head.encode() + png(8, 8)[:50])  # then nothing more
        start = time.monotonic()
        answer = read_all(connection)
    assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer, answer[:300]
    assert time.monotonic() - start < 10


def test_the_page_caps_steps_below_the_library(client, images):
    status, body = client.submit(images[0]["id"], [images[1]["id"]], {**QUICK, "num_steps": 2 * 10**6})
    assert status == 400 and "`num_steps` 2000000 must be" not in body["error"], body  # the library's bound
    assert "`num_steps` must be an integer in [0, 1000000]" in body["error"], body
    assert client.json("GET", "api/options")[1]["limits"]["max_steps"] == 10**6
    with pytest.raises(jobs_module.JobError, match="`num_steps` 5000 is over this server's largest, 1000"):
        jobs_module.config_from_settings({"num_steps": 5000}, jobs_module.Limits())  # the page's default cap
    with pytest.raises(jobs_module.JobError, match="`coarse_steps` 1001 is over this server's largest, 1000"):
        jobs_module.config_from_settings({"coarse_steps": 1001}, jobs_module.Limits())


def test_sessions_expire_and_the_server_caps_what_all_of_them_hold(tmp_path):
    """No server: the Jobs object, with small caps; an idle session's files go with it."""
    limits = jobs_module.Limits(max_sessions=2, session_idle=60.0, max_stored_uploads=2)
    jobs = jobs_module.Jobs(vgg.init_params(jax.random.key(0)), limits, folder=tmp_path, isolation="thread")
    try:
        first = jobs.new_session()
        upload = jobs.add_upload(first, png(8, 8), "a.png")
        assert upload.path.is_file() and upload.stored_bytes > 0
        second = jobs.new_session()
        jobs.add_upload(second, png(8, 8), "b.png")
        with pytest.raises(jobs_module.JobError, match="holds as many images as it takes"):
            jobs.add_upload(second, png(8, 8), "c.png")  # 2 stored over all sessions
        assert jobs.has_session(second)  # seen now: `first` is the longest idle
        third = jobs.new_session()  # past max_sessions: `first` ends, and its upload's file goes
        assert not jobs.has_session(first) and not upload.path.exists()
        with pytest.raises(jobs_module.NotFound):
            jobs.upload(first, upload.id)
        jobs.sessions[second] -= 3600  # idle for an hour, past session_idle
        jobs.new_session()
        assert not jobs.has_session(second) and jobs.has_session(third)
    finally:
        jobs.close()


def test_a_jpeg_is_kept_as_sent_where_a_png_of_its_pixels_would_be_larger(tmp_path):
    """Issue 25: a 381 KB noise JPEG was stored as an 8.9 MB PNG."""
    from nst_jax.io import load_image

    params = vgg.init_params(jax.random.key(0))
    jobs = jobs_module.Jobs(params, jobs_module.Limits(), folder=tmp_path, isolation="thread")
    try:
        session = jobs.new_session()
        noise = png(96, 128, fmt="JPEG")
        kept = jobs.add_upload(session, noise, "noise.jpg")
        assert kept.path.suffix == ".jpg" and kept.path.read_bytes() == noise
        assert kept.stored_bytes == len(noise) + len(kept.thumbnail)
        sent = tmp_path / "sent.jpg"
        sent.write_bytes(noise)
        np.testing.assert_array_equal(load_image(kept.path), load_image(sent))  # the pixels a run reads
        flat = io.BytesIO()
        Image.new("RGB", (128, 96), (40, 90, 200)).save(flat, "JPEG")
        assert jobs.add_upload(session, flat.getvalue(), "flat.jpg").path.suffix == ".png"  # the PNG is smaller
        assert jobs.add_upload(session, png(96, 128), "noise.png").path.suffix == ".png"
    finally:
        jobs.close()


def test_a_strip_no_size_can_fix_is_told_to_crop_in_the_settings_own_names(client, images):
    _, strip = client.upload(png(1, 20000, 3), "strip.png")
    status, body = client.submit(strip["id"], [images[1]["id"]], QUICK)
    assert status == 400 and "crop it to a less elongated shape" in body["error"], body
    assert "--" not in body["error"]  # the page has no command-line flags
    _, narrow = client.upload(png(10, 200, 4), "narrow.png")
    status, body = client.submit(narrow["id"], [images[1]["id"]], QUICK)
    assert status == 400 and "use a long side of at least" in body["error"] and "--" not in body["error"], body


def test_a_run_inside_a_long_chunk_is_ended_within_seconds_and_the_queue_moves(server, client, images):
    """Issue 25: a cancel waited for the chunk in hand (a chunk of 10000 steps, or a hang, held
    everyone's queue). The run's process is ended ``cancel_grace`` seconds after the cancel."""
    runner = server.jobs.runner
    starts = runner.starts
    endless = {**QUICK, "num_steps": 10**6, "chunk_size": 10**4}  # no callback for 10000 steps
    _, running = client.submit(images[0]["id"], [images[1]["id"]], endless)
    _, queued = client.submit(images[0]["id"], [images[1]["id"]], QUICK)
    client.wait(running["id"], states=("running",))
    time.sleep(1.0)  # inside its first chunk
    asked = time.monotonic()
    assert client.json("POST", f"api/jobs/{running['id']}/cancel")[0] == 200
    job = client.wait(running["id"], timeout=60)
    took = time.monotonic() - asked
    assert job["state"] == "cancelled" and not job["has_result"] and job["error"] is None, job
    assert LIMITS.cancel_grace <= took < LIMITS.cancel_grace + 5, took
    assert client.wait(queued["id"], timeout=120)["state"] == "done"
    assert runner.starts == starts + 1  # in a fresh process


def test_a_run_whose_process_dies_fails_alone(server, client, images):
    """A child killed from outside (the kernel's out-of-memory killer) fails its run, not the server."""
    import os
    import signal

    runner = server.jobs.runner
    _, doomed = client.submit(images[0]["id"], [images[1]["id"]], {**QUICK, "num_steps": 10**6, "chunk_size": 10**4})
    client.wait(doomed["id"], states=("running",))
    time.sleep(0.5)
    os.kill(runner._process.pid, signal.SIGKILL)
    job = client.wait(doomed["id"], timeout=60)
    assert job["state"] == "failed" and "ended unexpectedly, exit code -9 (killed: out of memory?)" in job["error"]
    _, after = client.submit(images[0]["id"], [images[1]["id"]], QUICK)
    assert client.wait(after["id"], timeout=120)["state"] == "done"


def test_in_a_thread_a_cancel_stops_after_the_chunk_and_isolation_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"`isolation` must be one of process, thread, got 'fork'"):
        jobs_module.Jobs({}, folder=tmp_path, isolation="fork")
    with pytest.raises(ValueError, match=r"`cancel_grace` must be in \(0, 600\] seconds, got 0"):
        jobs_module.Jobs({}, jobs_module.Limits(cancel_grace=0), folder=tmp_path, isolation="thread")
    jobs = jobs_module.Jobs(vgg.init_params(jax.random.key(0)), LIMITS, folder=tmp_path, isolation="thread")
    try:
        session = jobs.new_session()
        content, style = jobs.add_upload(session, png(24, 32), "c.png"), jobs.add_upload(session, png(40, 40, 1))
        request = {"content": content.id, "styles": [style.id], "settings": {**QUICK, "num_steps": 10**6}}
        job = jobs.submit(session, {**request, "settings": {**QUICK, "num_steps": 10**6, "chunk_size": 5}})
        end = time.time() + 120
        while job.progress.get("step", 0) == 0 and time.time() < end:
            time.sleep(0.05)
        jobs.cancel(session, job.id)
        while job.state == "running" and time.time() < end:
            time.sleep(0.05)
        assert job.state == "cancelled" and job.preview is not None and job.result is None
        done = jobs.submit(session, {**request, "settings": QUICK})
        while done.state in ("queued", "running") and time.time() < end:
            time.sleep(0.05)
        assert done.state == "done" and done.result is done.preview and done.summary["steps"] == 20
    finally:
        jobs.close()


def test_a_run_with_a_fine_style_is_checked_at_once_and_runs(client, images):
    """Scale control on the page: the fine style is an upload, checked as stylize checks it."""
    _, fine = client.upload(png(40, 40, 5), "scream.png")
    content, style = images[0]["id"], images[1]["id"]
    status, body = client.submit(content, [style], QUICK, fine_style=fine["id"])
    assert status == 400 and "`fine_style` restyles the coarse-to-fine stages after the first" in body["error"], body
    status, body = client.submit(content, [style], QUICK, fine_style=7)
    assert status == 400 and body["error"] == "`fine_style` must be the id of an uploaded image", body
    staged = {"size": 48, "num_steps": 3, "scales": [32, 48]}
    status, job = client.submit(content, [style], staged, fine_style=fine["id"])
    assert status == 201 and job["fine_style"] == fine["id"], job
    done = client.wait(job["id"], timeout=180)
    assert done["state"] == "done" and done["summary"]["steps"] == 6, done
