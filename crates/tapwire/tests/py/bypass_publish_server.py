
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(8)
emit(pid=os.getpid(), listening=s.getsockname())
c, a = s.accept()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
c.sendall(("%s %d" % (h.hexdigest(), n)).encode())
c.close()
emit(client=a)
