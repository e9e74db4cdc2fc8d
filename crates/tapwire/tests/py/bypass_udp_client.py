
port, other = int(sys.argv[1]), int(sys.argv[2])
res = {}
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
u.connect(("10.0.2.2", port))
res["sock"] = u.getsockname()
res["peer"] = u.getpeername()
u.send(b"one")
res["one"] = u.recv(100).decode()
# sendto/sendmsg with the gateway again: performed by the supervisor, translated.
u.sendto(b"two", ("10.0.2.2", port))
res["two"] = u.recv(100).decode()
u.sendmsg([b"thr", b"ee"], [], 0, ("10.0.2.2", port))
res["three"] = u.recv(100).decode()
# sendmmsg of four messages, the third to a refused destination: one notification sends
# the first two (each destination checked), stops at the third (ENETUNREACH on the retry).
import ctypes
libc = ctypes.CDLL(None, use_errno=True)


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def sin(ip, p):
    b = (2).to_bytes(2, "little") + p.to_bytes(2, "big") + socket.inet_aton(ip) + bytes(8)
    return ctypes.create_string_buffer(b, 16)


keep = []
msgs = (Mmsghdr * 4)()
for i, (data, ip, p) in enumerate(((b"mm1", "10.0.2.2", port), (b"mm2", "10.0.2.2", port),
                                  (b"bad", "127.0.0.1", other), (b"mm4", "10.0.2.2", port))):
    buf = ctypes.create_string_buffer(data, len(data))
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    name = sin(ip, p)
    keep += [buf, iov, name]
    msgs[i].hdr.name = ctypes.cast(name, ctypes.c_void_p)
    msgs[i].hdr.namelen = 16
    msgs[i].hdr.iov = ctypes.pointer(iov)
    msgs[i].hdr.iovlen = 1
rc = libc.sendmmsg(u.fileno(), msgs, 4, 0)
res["mmsg_rc"] = rc if rc >= 0 else -ctypes.get_errno()
res["mmsg_lens"] = [msgs[i].len for i in range(2)]
res["mmsg_got"] = sorted(u.recv(100).decode() for _ in range(max(rc, 0)))
rc = libc.sendmmsg(u.fileno(), ctypes.byref(msgs, 2 * ctypes.sizeof(Mmsghdr)), 2, 0)
res["mmsg_retry"] = ctypes.get_errno() if rc < 0 else 0
# A destination the host socket must not reach: the container's own loopback.
for name, f in (("sendto", lambda: u.sendto(b"x", ("127.0.0.1", other))),
                ("sendmsg", lambda: u.sendmsg([b"x"], [], 0, ("127.0.0.1", other))),
                ("connect", lambda: u.connect(("127.0.0.1", other)))):
    try:
        f()
        res[name] = 0
    except OSError as e:
        res[name] = e.errno
emit(**res)
