
port, closed = int(sys.argv[1]), int(sys.argv[2])
res = {}
s = socket.socket()
s.setblocking(False)
res["first"] = s.connect_ex(("10.0.2.2", port))
r, w, x = select.select([], [s], [], 10)
res["writable"] = bool(w)
res["so_error"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
res["sock"] = s.getsockname()
res["peer"] = s.getpeername()
s.setblocking(True)
res["greeting"] = s.recv(10).decode()
# Non-blocking connect to a closed port: EINPROGRESS then ECONNREFUSED, or refused at once.
c = socket.socket()
c.setblocking(False)
first = c.connect_ex(("10.0.2.2", closed))
if first == errno.EINPROGRESS:
    select.select([], [c], [], 10)
    first = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
res["refused_nb"] = first
# Blocking connect to a closed port.
b = socket.socket()
try:
    b.connect(("10.0.2.2", closed))
    res["refused_b"] = 0
except OSError as e:
    res["refused_b"] = e.errno
emit(**res)
