"""Abuse a live `nst-jax serve` on loopback and print what each attempt got (issue 25).

    python scripts/abuse.py            # random weights: the network's numbers do not matter here
    python scripts/abuse.py --weights  # the default VGG-19 weights, as a real server has them

Starts its own server on 127.0.0.1 (a free port), sends each case once, bounded in count and
time (about 30 s in all; every socket has a timeout), prints a table (case, what was
expected, what came back, seconds, the process's peak memory) and stops the server. It
never talks to any address but its own server's.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import resource
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from nst_jax import jobs as jobs_module
from nst_jax import serve


def png(h: int, w: int, seed: int = 0) -> bytes:
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


class Target:
    def __init__(self, port: int):
        self.port = port
        self.cookie = ""

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, cookie=True):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Host": "127.0.0.1", **(headers or {})}
            if cookie and self.cookie:
                headers["Cookie"] = self.cookie
            if method == "POST":
                headers.setdefault("X-NST-JAX", "1")
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.getheader("set-cookie") and not self.cookie:
                self.cookie = response.getheader("set-cookie").split(";")[0]
            return response.status, data
        finally:
            connection.close()

    def raw(self, data: bytes, wait: float = 30.0) -> tuple[str, float]:
        """Sends ``data`` and nothing more; what came back (its status line, or 'closed') and when."""
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as connection:
            answer = b""
            try:
                connection.sendall(data)
            except (ConnectionResetError, BrokenPipeError):  # answered (and closed) while still sending
                pass
            try:
                while chunk := connection.recv(65536):
                    answer += chunk
            except TimeoutError:
                return "still open", time.monotonic() - start
            except ConnectionResetError:
                if not answer:
                    return "reset", time.monotonic() - start
        line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        return (line.removeprefix("HTTP/1.1 ") or "closed"), time.monotonic() - start

    def head(self, method: str, path: str, length: int, content_type: str) -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {self.cookie}\r\nX-NST-JAX: 1\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        ).encode()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", action="store_true", help="load the default VGG-19 weights")
    args = parser.parse_args(argv)
    import jax

    from nst_jax import load_params, vgg

    params = load_params(None)[0] if args.weights else vgg.init_params(jax.random.key(0))
    holder, started = [], threading.Event()
    sock = serve.bind("127.0.0.1", 0)
    limits = jobs_module.Limits()
    thread = threading.Thread(
        target=serve.serve,
        args=(params, "127.0.0.1", 0, limits),
        kwargs={"sock": sock, "ready": lambda r: (holder.append(r), started.set())},
        daemon=True,
    )
    thread.start()
    if not started.wait(60):
        print("abuse: the server did not start", file=sys.stderr)
        return 1
    running = holder[0]
    target = Target(sock.getsockname()[1])
    target.request("GET", "/")
    _, content = target.request("POST", "/api/uploads", png(24, 32, 0), {"Content-Type": "image/png"})
    _, style = target.request("POST", "/api/uploads", png(40, 40, 1), {"Content-Type": "image/png"})
    content_id, style_id = json.loads(content)["id"], json.loads(style)["id"]

    def submit(settings_text: str):
        text = f'{{"content": "{content_id}", "styles": ["{style_id}"], "settings": {settings_text}}}'
        return target.request("POST", "/api/jobs", text.encode(), {"Content-Type": "application/json"})

    rows = []

    def case(name: str, expected: str, attempt):
        start = time.monotonic()
        try:
            got = attempt()
        except Exception as e:  # a case that breaks the client is a finding, not a crash of the script
            got = f"{type(e).__name__}: {e}"[:60]
        if isinstance(got, tuple) and isinstance(got[1], bytes):
            status, body = got
            try:
                message = json.loads(body).get("error", "")
            except ValueError:
                message = body[:40].decode(errors="replace")
            got = f"{status} {message[:70]}"
        elif isinstance(got, tuple):
            got = f"{got[0]} after {got[1]:.1f} s"
        rows.append((name, expected, str(got), time.monotonic() - start, peak_mb()))

    case("memory_size 2**31", "400", lambda: submit('{"size": 32, "num_steps": 3, "memory_size": 2147483648}'))
    case("memory_size 50000", "400", lambda: submit('{"size": 32, "memory_size": 50000}'))
    case("num_steps 1e308", "400", lambda: submit('{"num_steps": 1e308}'))
    case("num_steps 2**63", "400", lambda: submit('{"num_steps": 9223372036854775808}'))
    case("size NaN", "400", lambda: submit('{"size": NaN}'))
    case("seed 1e999", "400", lambda: submit('{"seed": 1e999}'))
    case("num_steps Infinity", "400", lambda: submit('{"num_steps": Infinity}'))
    case("style_weight 10**400", "400", lambda: submit('{"style_weight": 1' + "0" * 400 + "}"))
    case("array nested 10000 deep", "400", lambda: submit('{"size": ' + "[" * 10000 + "]" * 10000 + "}"))
    members = "/api/jobs/" + "a" * 16 + "/members/" + "9" * 5000 + ".png"
    case("member of 5000 digits", "404", lambda: target.request("GET", members))
    case("the same, no cookie", "403", lambda: target.request("GET", members, cookie=False))
    big = target.head("POST", "/api/jobs", 200 * 2**20, "application/json")
    case("200 MB run declared, not sent", "413 at once", lambda: target.raw(big))
    too_big = target.head("POST", "/api/uploads", 30 * 2**20, "image/png")
    case("30 MB upload declared", "413 within 1 s", lambda: target.raw(too_big))

    # The waits run side by side: each is bounded by the server's timeouts (10 s).
    stalled = target.head("POST", "/api/uploads", 20 * 2**20, "image/png") + b"\x89PNG" + b"\0" * 2**20
    waits = {
        "silent connection": (lambda: target.raw(b""), "closed within 10 s"),
        "half a request head": (lambda: target.raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: "), "closed"),
        "upload stalled after 1 MB": (lambda: target.raw(stalled), "408 within 10 s"),
    }
    with ThreadPoolExecutor(len(waits)) as pool:
        futures = {name: (pool.submit(f), expected) for name, (f, expected) in waits.items()}
        for name, (future, expected) in futures.items():
            case(name, expected, future.result)

    def six_stalled_uploads():
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: target.raw(stalled), range(6)))
        return ", ".join(sorted(a.split(" ")[0] for a, _ in answers)), max(s for _, s in answers)

    case("6 stalled uploads at once", "4x 408, 2x 503", six_stalled_uploads)

    def cancel_a_long_run(chunk: int):
        _, body = submit(f'{{"size": 32, "num_steps": 1000, "num_scales": 1, "chunk_size": {chunk}}}')
        job = json.loads(body)["id"]
        state = lambda: next(
            j["state"] for j in json.loads(target.request("GET", "/api/jobs")[1])["jobs"] if j["id"] == job
        )
        deadline = time.monotonic() + 120
        while state() == "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # running: compiling, or inside its first chunk
        start = time.monotonic()
        target.request("POST", f"/api/jobs/{job}/cancel")
        while (now := state()) == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        return now, time.monotonic() - start

    case("cancel a running run (chunks of 5 steps)", "within seconds", lambda: cancel_a_long_run(5))
    case("cancel inside a 1000-step chunk", f"within {limits.cancel_grace:g} s + 1", lambda: cancel_a_long_run(1000))

    def after_the_cancel():
        _, body = submit('{"size": 32, "num_steps": 20, "num_scales": 1}')
        job = json.loads(body)["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = next(j for j in json.loads(target.request("GET", "/api/jobs")[1])["jobs"] if j["id"] == job)
            if listed["state"] not in ("queued", "running"):
                return listed["state"], time.monotonic() - (deadline - 120)
            time.sleep(0.05)
        return "still running", 120.0

    case("the next run (a fresh process)", "done", after_the_cancel)

    def many_sessions():
        start = time.monotonic()
        for _ in range(300):
            Target(target.port).request("GET", "/")
        return f"{len(running.jobs.sessions)} sessions kept", time.monotonic() - start

    # Last: past max_sessions the longest-idle sessions end, this script's own among them.
    case("300 new pages", f"at most {limits.max_sessions} kept", many_sessions)

    running.stop()
    thread.join(30)
    print("| case | expected | got | seconds | peak MB |\n| --- | --- | --- | --- | --- |")
    for name, expected, got, seconds, mb in rows:
        print(f"| {name} | {expected} | {got.replace('|', '/')} | {seconds:.2f} | {mb:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
