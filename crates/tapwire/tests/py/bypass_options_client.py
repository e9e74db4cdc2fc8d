
port = int(sys.argv[1])
def opts(s):
    return dict(
        nodelay=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        keepalive=s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        keepidle=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        keepintvl=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        keepcnt=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        tos=s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS),
        sndbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        linger=list(struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))),
        rcvtimeo=list(struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))),
        inheritable=s.get_inheritable(),
    )
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 7)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 100000)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 2, 500000))
before = opts(s)
s.connect(("10.0.2.2", port))
after = opts(s)
t = socket.socket()
t.set_inheritable(True)
t.connect(("10.0.2.2", port))
emit(before=before, after=after, sock=s.getsockname(), inh_sock=t.getsockname(), inh=t.get_inheritable())
