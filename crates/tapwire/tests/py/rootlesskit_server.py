
import errno, hashlib, os, socket, sys, threading
d, probe = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection(('10.0.2.2', probe), timeout=10).close()
    print('loopback: reachable', flush=True)
except OSError as e:
    print('loopback: %s' % errno.errorcode.get(e.errno, e.errno), flush=True)
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('0.0.0.0', 8000))
l.listen(4)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('0.0.0.0', 8001))
def echo():
    while True:
        b, a = u.recvfrom(65536)
        u.sendto(b'echo:' + b, a)
threading.Thread(target=echo, daemon=True).start()
with open(os.path.join(d, 'ready.tmp'), 'w') as f:
    f.write('%d\n' % os.getuid())
os.rename(os.path.join(d, 'ready.tmp'), os.path.join(d, 'ready'))
c, a = l.accept()
hdr = b''
while len(hdr) < 8:
    b = c.recv(8 - len(hdr))
    if not b:
        sys.exit('short header')
    hdr += b
want = int.from_bytes(hdr, 'little')
h, n = hashlib.sha256(), 0
while n < want:
    b = c.recv(min(1 << 20, want - n))
    if not b:
        break
    h.update(b)
    n += len(b)
c.sendall(('%s %d %s\n' % (h.hexdigest(), n, a[0])).encode())
with open(os.path.join(d, 'down.bin'), 'rb') as f:
    c.sendall(f.read())
c.shutdown(socket.SHUT_WR)
# Exit (and so end RootlessKit and the forwarder) only once the client has read it all and
# closed: the forwarder may still hold data in flight.
c.recv(1)
print('served %s' % a[0], flush=True)
