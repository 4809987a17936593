"""The server side of a WebSocket (RFC 6455) on the stand-ins' HTTP handler, as much as ComfyUI's /ws
needs: the upgrade, unmasked text frames out, and noticing the client's close (stdlib only)."""

import base64
import hashlib
import select
import struct

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept(handler):
    """Answer the upgrade (101); False, with a 400 sent, when the request is not a WebSocket one."""
    key = handler.headers.get("Sec-WebSocket-Key")
    if not key or "websocket" not in (handler.headers.get("Upgrade") or "").lower():
        handler.send_json(400, {"error": "Expected WebSocket upgrade"})
        return False
    digest = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", digest)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True  # the HTTP exchange ends here, whatever happens to the socket
    return True


def send_text(handler, text):
    data = text.encode()
    if len(data) < 126:
        head = struct.pack("!BB", 0x81, len(data))
    elif len(data) < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, len(data))
    else:
        head = struct.pack("!BBQ", 0x81, 127, len(data))
    handler.wfile.write(head + data)
    handler.wfile.flush()


def closed(handler):
    """True once the client closed (a close frame, or the end of the stream); other frames are dropped."""
    if not select.select([handler.connection], [], [], 0)[0]:
        return False
    head = handler.rfile.read(2)
    if len(head) < 2:
        return True
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", handler.rfile.read(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", handler.rfile.read(8))[0]
    handler.rfile.read((4 if head[1] & 0x80 else 0) + length)  # mask key and payload, unused
    return opcode == 0x8
