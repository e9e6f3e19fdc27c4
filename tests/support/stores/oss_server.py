"""A local server that speaks Alibaba Cloud OSS's HTTP API, for tests (OSS cannot be reached here).

It implements what a model store needs, as documented for OSS: GetBucket (ListObjects v1, and v2
with `list-type=2`), GetObject with Range, HeadObject, PutObject and DeleteObject on path-style URLs
(`http://127.0.0.1:PORT/bucket/key`, which is how oss2 addresses an IP endpoint), with OSS's error
XML and `x-oss-request-id`, the object's CRC-64 in `x-oss-hash-crc64ecma`, and V1 request signing:
`Authorization: OSS <AccessKeyId>:<base64 HMAC-SHA1(secret, StringToSign)>` where StringToSign is
`VERB\\nContent-MD5\\nContent-Type\\nDate\\n` + canonicalized x-oss-* headers + canonicalized
resource. A wrong id gets 403 InvalidAccessKeyId, a wrong signature 403 SignatureDoesNotMatch.

Faults can be queued to test clients against a misbehaving network: HTTP 500/503 for the next N
requests, a stall longer than the client's timeout, a connection reset in the middle of an object,
a slow trickle, and corrupted bytes.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import crcmod

# Query parameters that are part of the signed resource (OSS V1 signing); all others are not.
SUBRESOURCES = frozenset({
    "acl", "uploads", "location", "cors", "logging", "website", "referer", "lifecycle", "delete",
    "append", "tagging", "objectMeta", "uploadId", "partNumber", "security-token", "position",
    "img", "style", "styleName", "replication", "replicationProgress", "replicationLocation",
    "cname", "bucketInfo", "comp", "qos", "live", "status", "vod", "startTime", "endTime",
    "symlink", "x-oss-process", "response-content-type", "response-content-language",
    "response-expires", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "restore", "callback", "callback-var", "continuation-token",
    "versionId", "versioning", "versions", "encryption", "policy", "requestPayment",
    "x-oss-traffic-limit", "stat", "objectInfo", "group", "link", "inventory", "inventoryId",
    "worm", "wormId", "wormExtend", "x-oss-request-payer", "sequential",
})
MAX_SKEW_SECONDS = 15 * 60

_crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)


@dataclass
class StoredObject:
    data: bytes
    mtime: float
    etag: str
    crc64: int


@dataclass
class Fault:
    """One kind of misbehaviour, applied to the next `count` requests that `match`.

    kind: "status" (answer `status` with an OSS error), "stall" (say nothing for `seconds`, then
    close), "reset" (send the headers and half the object, then reset the connection), "trickle"
    (send the object in `chunk`-byte pieces `seconds` apart: slow but correct), "corrupt" (flip a
    byte in the middle of the object, headers and CRC as for the real one).
    """

    kind: str
    count: int = 1
    status: int = 503
    seconds: float = 0.0
    chunk: int = 1024
    match: Callable[[str, str, str], bool] = lambda method, bucket, key: True
    hits: int = 0


@dataclass
class Request:
    method: str
    bucket: str
    key: str
    query: dict[str, str]
    status: int = 0
    fault: str = ""


@dataclass
class OssState:
    credentials: dict[str, str]
    buckets: dict[str, dict[str, StoredObject]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)


class OssServer:
    """`with OssServer({"id": "secret"}, buckets=["models"]) as oss:` serves on `oss.endpoint`."""

    def __init__(self, credentials: dict[str, str], buckets: list[str] = ()):
        self.state = OssState(dict(credentials))
        for b in buckets:
            self.state.buckets[b] = {}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.state = self.state  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="oss-server",
                                        daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> OssServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OssServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls --------------------------------------------------------------------------
    def inject(self, fault: Fault) -> Fault:
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.requests)

    def objects(self, bucket: str) -> dict[str, StoredObject]:
        with self.state.lock:
            return dict(self.state.buckets[bucket])


def sign_v1(secret: str, verb: str, content_md5: str, content_type: str, date: str,
            oss_headers: dict[str, str], resource: str) -> str:
    canon = "".join(f"{k}:{v}\n" for k, v in sorted(oss_headers.items()))
    to_sign = "\n".join([verb, content_md5, content_type, date, canon + resource])
    digest = hmac.new(secret.encode(), to_sign.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"

    def log_message(self, *args: object) -> None:  # quiet: tests read state.requests instead
        pass

    @property
    def state(self) -> OssState:
        return self.server.state  # type: ignore[attr-defined]

    # --- plumbing -------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self.request_id = uuid.uuid4().hex[:24].upper()
        parts = urlsplit(self.path)
        raw_path = parts.path.lstrip("/")
        bucket, _, raw_key = raw_path.partition("/")
        key = unquote(raw_key)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = b""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length)
        record = Request(method, bucket, key, query)
        with self.state.lock:
            self.state.requests.append(record)
            fault = self._take_fault(method, bucket, key)
        record.fault = fault.kind if fault else ""
        if fault and fault.kind == "stall":
            self.state.closing.wait(fault.seconds)
            self.close_connection = True
            return
        if fault and fault.kind == "status":
            code = "InternalError" if fault.status == 500 else "ServiceUnavailable"
            record.status = fault.status
            self._error(method, fault.status, code, "injected fault")
            return
        error = self._authenticate(method, bucket, key, query)
        if error:
            record.status = 403
            self._error(method, 403, *error)
            return
        if bucket not in self.state.buckets:
            record.status = 404
            self._error(method, 404, "NoSuchBucket", "The specified bucket does not exist.")
            return
        if not key:
            if method != "GET":
                record.status = 405
                self._error(method, 405, "MethodNotAllowed", "Only GetBucket is served.")
                return
            record.status = 200
            self._list(bucket, query)
        elif method in ("GET", "HEAD"):
            record.status = self._get(method, bucket, key, fault)
        elif method == "PUT":
            record.status = self._put(bucket, key, body)
        else:
            with self.state.lock:
                self.state.buckets[bucket].pop(key, None)
            record.status = 204
            self._send(204, b"", {})

    def _take_fault(self, method: str, bucket: str, key: str) -> Fault | None:
        for fault in self.state.faults:
            if fault.hits < fault.count and fault.match(method, bucket, key):
                fault.hits += 1
                return fault
        return None

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
        self.send_response(status)
        self.send_header("x-oss-request-id", self.request_id)
        self.send_header("Date", email.utils.formatdate(usegmt=True))
        for k, v in headers.items():
            if k != "Content-Length":
                self.send_header(k, v)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, method: str, status: int, code: str, message: str,
               extra: dict[str, str] | None = None) -> None:
        fields = {"Code": code, "Message": message, "RequestId": self.request_id,
                  "HostId": "127.0.0.1", **(extra or {})}
        xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
               + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields.items()) + "</Error>").encode()
        if method == "HEAD":  # no body: OSS puts the error document in a header instead
            self._send(status, b"", {"x-oss-err": base64.b64encode(xml).decode(),
                                     "Content-Length": "0"}, head=True)
        else:
            self._send(status, xml, {"Content-Type": "application/xml"})

    # --- signing --------------------------------------------------------------------------------
    def _authenticate(self, method: str, bucket: str, key: str,
                      query: dict[str, str]) -> tuple[str, str] | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("OSS ") or ":" not in auth:
            return ("AccessDenied", "Anonymous access is forbidden for this operation.")
        access_id, _, given = auth[4:].rpartition(":")
        secret = self.state.credentials.get(access_id)
        if secret is None:
            return ("InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.")
        date = self.headers.get("x-oss-date") or self.headers.get("Date", "")
        try:
            skew = abs(time.time() - email.utils.parsedate_to_datetime(date).timestamp())
        except (TypeError, ValueError):
            return ("AccessDenied", "Date header is missing or malformed.")
        if skew > MAX_SKEW_SECONDS:
            return (
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            )
        sub = sorted((k, v) for k, v in query.items() if k in SUBRESOURCES)
        resource = f"/{bucket}/{key}" + (
            "?" + "&".join(f"{k}={v}" if v else k for k, v in sub) if sub else ""
        )
        oss_headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-oss-")}
        expected = sign_v1(secret, method, self.headers.get("Content-MD5", ""),
                           self.headers.get("Content-Type", ""), date, oss_headers, resource)
        if not hmac.compare_digest(expected, given):
            return (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None

    # --- operations -----------------------------------------------------------------------------
    def _list(self, bucket: str, query: dict[str, str]) -> None:
        v2 = query.get("list-type") == "2"
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = min(int(query.get("max-keys") or 100), 1000)
        url_encoded = query.get("encoding-type") == "url"
        start = query.get("continuation-token", "") if v2 else query.get("marker", "")
        if v2 and query.get("start-after", "") > start:
            start = query["start-after"]
        with self.state.lock:
            keys = sorted(k for k in self.state.buckets[bucket] if k.startswith(prefix) and k > start)
            objects = dict(self.state.buckets[bucket])
        contents: list[str] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for k in keys:
            if delimiter:
                cut = k.find(delimiter, len(prefix))
                if cut >= 0:
                    common = k[: cut + len(delimiter)]
                    if prefixes and prefixes[-1] == common:
                        last = k
                        continue
                    if len(contents) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(common)
                    last = k
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            contents.append(k)
            last = k
        enc = (lambda s: quote(s, safe="")) if url_encoded else (lambda s: s)
        out = ['<?xml version="1.0" encoding="UTF-8"?>', "<ListBucketResult>",
               f"<Name>{bucket}</Name>", f"<Prefix>{escape(enc(prefix))}</Prefix>",
               f"<MaxKeys>{max_keys}</MaxKeys>", f"<Delimiter>{escape(enc(delimiter))}</Delimiter>",
               f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if url_encoded:
            out.append("<EncodingType>url</EncodingType>")
        if v2:
            out.append(f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>")
            if truncated:
                out.append(f"<NextContinuationToken>{escape(enc(last))}</NextContinuationToken>")
        else:
            out.append(f"<Marker>{escape(enc(start))}</Marker>")
            if truncated:
                out.append(f"<NextMarker>{escape(enc(last))}</NextMarker>")
        for k in contents:
            o = objects[k]
            out.append(f"<Contents><Key>{escape(enc(k))}</Key><LastModified>"
                       f"{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(o.mtime))}</LastModified>"
                       f'<ETag>"{o.etag}"</ETag><Type>Normal</Type><Size>{len(o.data)}</Size>'
                       "<StorageClass>Standard</StorageClass></Contents>")
        for p in prefixes:
            out.append(f"<CommonPrefixes><Prefix>{escape(enc(p))}</Prefix></CommonPrefixes>")
        out.append("</ListBucketResult>")
        self._send(200, "".join(out).encode(), {"Content-Type": "application/xml"})

    def _get(self, method: str, bucket: str, key: str, fault: Fault | None) -> int:
        with self.state.lock:
            obj = self.state.buckets[bucket].get(key)
        if obj is None:
            self._error(method, 404, "NoSuchKey", "The specified key does not exist.")
            return 404
        data = obj.data
        headers = {"ETag": f'"{obj.etag}"', "Last-Modified": email.utils.formatdate(obj.mtime, usegmt=True),
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                   "x-oss-object-type": "Normal", "x-oss-hash-crc64ecma": str(obj.crc64)}
        status = 200
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and data:
            first_s, _, last_s = rng[6:].partition("-")
            first = int(first_s) if first_s else max(0, len(data) - int(last_s))
            last = min(int(last_s), len(data) - 1) if first_s and last_s else len(data) - 1
            if first < len(data) and first <= last:
                headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
                del headers["x-oss-hash-crc64ecma"]  # the CRC is of the whole object
                data = data[first:last + 1]
                status = 206
        headers["Content-Length"] = str(len(data))
        if method == "HEAD":
            self._send(status, b"", headers, head=True)
            return status
        if fault and fault.kind == "corrupt" and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
        if fault and fault.kind in ("reset", "trickle"):
            self._send(status, b"", headers, head=True)
            if fault.kind == "reset":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                # SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer".
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return status
            for i in range(0, len(data), fault.chunk):
                self.wfile.write(data[i:i + fault.chunk])
                self.wfile.flush()
                if self.state.closing.wait(fault.seconds):
                    break
            return status
        self._send(status, data, headers)
        return status

    def _put(self, bucket: str, key: str, body: bytes) -> int:
        md5 = self.headers.get("Content-MD5")
        if md5 and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
            self._error("PUT", 400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
            return 400
        obj = StoredObject(body, time.time(), hashlib.md5(body).hexdigest().upper(), _crc64(body))
        with self.state.lock:
            self.state.buckets[bucket][key] = obj
        self._send(200, b"", {"ETag": f'"{obj.etag}"', "x-oss-hash-crc64ecma": str(obj.crc64)})
        return 200
