
port = int(sys.argv[1])
res = {}
for key, fam, addr in (("v6", socket.AF_INET6, ("fd00::2", port)),
                       ("mapped", socket.AF_INET6, ("::ffff:10.0.2.2", port)),
                       ("v4", socket.AF_INET, ("10.0.2.2", port))):
    s = socket.socket(fam)
    s.settimeout(10)
    try:
        s.connect(addr)
        res[key] = dict(sock=s.getsockname()[:2], peer=s.getpeername()[:2], got=s.recv(10).decode())
    except OSError as e:
        res[key] = e.errno
# ::1 is the container's own: nobody listens there.
s = socket.socket(socket.AF_INET6)
res["lo6"] = s.connect_ex(("::1", port))
emit(**res)
