
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
