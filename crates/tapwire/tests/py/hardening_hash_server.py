
import hashlib, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('127.0.0.1', port))
l.listen(4096)
sys.stdout.write('ready\n'); sys.stdout.flush()
l.settimeout(60)
conns = [l.accept()[0] for _ in range(n)]
def readn(s, k):
    b = b''
    while len(b) < k:
        c = s.recv(k - len(b))
        if not c:
            raise EOFError
        b += c
    return b
for s in conns:
    s.settimeout(60)
    k = int.from_bytes(readn(s, 4), 'big')
    s.sendall(hashlib.sha256(readn(s, k)).hexdigest().encode())
for s in conns:
    s.recv(1)
