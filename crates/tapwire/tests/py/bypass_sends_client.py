
port = int(sys.argv[1])
res = {}
# DNS through the tap's forwarder: glibc's resolver sends with sendmmsg/sendto, which the
# supervisor performs on the container's own socket.
res["dns"] = socket.gethostbyname("tapwire.test")
# UNIX sockets are not IP: their calls pass through (SCM_RIGHTS included).
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
socket.send_fds(a, [b"fd"], [w])
msg, fds, _, _ = socket.recv_fds(b, 10, 1)
res["unix"] = [msg.decode(), len(fds)]
# Bulk sendmsg on a blocking bypassed TCP socket: performed by the supervisor in chunks.
s = socket.create_connection(("10.0.2.2", port), timeout=60)
s.settimeout(None)
data = bytes(range(256)) * 16384
view, sent = memoryview(data), 0
while sent < len(data):
    sent += s.sendmsg([view[sent:sent + 3000000]])
s.shutdown(socket.SHUT_WR)
res["sha"] = hashlib.sha256(data).hexdigest()
res["sock"] = s.getsockname()
emit(**res)
