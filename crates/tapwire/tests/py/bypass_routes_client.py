
peer_port, lo_port = int(sys.argv[1]), int(sys.argv[2])
res = {}
# The container's own loopback: our own server, never the host's (which listens on the same port).
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", lo_port))
srv.listen(4)
def serve():
    c, _ = srv.accept()
    c.sendall(b"container")
    c.close()
threading.Thread(target=serve, daemon=True).start()
c = socket.create_connection(("127.0.0.1", lo_port), timeout=10)
res["loopback"] = c.recv(20).decode()
# A remote host: bypassed unless ignored.
p = socket.create_connection(("192.168.77.2", peer_port), timeout=10)
res["peer_sock"] = p.getsockname()
res["peer_greeting"] = p.recv(20).decode()
# The gateway.
try:
    g = socket.create_connection(("10.0.2.2", lo_port), timeout=10)
    res["gw_sock"] = g.getsockname()
    res["gw_greeting"] = g.recv(20).decode()
except OSError as e:
    res["gw_errno"] = e.errno
# UDP to the gateway.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.connect(("10.0.2.2", lo_port))
    res["udp_sock"] = u.getsockname()
except OSError as e:
    res["udp_errno"] = e.errno
emit(**res)
