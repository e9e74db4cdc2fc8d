
port = int(sys.argv[1])
res = {}
t0 = time.time()
def slow():
    s = socket.socket()
    try:
        s.connect(("192.168.77.3", 80))   # nobody answers ARP: takes seconds
        res["slow"] = 0
    except OSError as e:
        res["slow"] = e.errno
    res["slow_t"] = time.time() - t0
th = threading.Thread(target=slow)
th.start()
time.sleep(0.3)
n = 0
for _ in range(20):
    s = socket.create_connection(("10.0.2.2", port), timeout=10)
    n += s.getsockname()[0] == "127.0.0.1"
    s.close()
res["fast"], res["fast_t"] = n, time.time() - t0
# SO_SNDTIMEO bounds a blocking connect: EINPROGRESS after it, as the kernel does.
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 400000))
t1 = time.time()
try:
    s.connect(("192.168.77.4", 80))
    res["sndtimeo"] = 0
except OSError as e:
    res["sndtimeo"] = e.errno
res["sndtimeo_t"] = time.time() - t1
th.join()
# A process killed while its connect is pending in the supervisor.
pid = os.fork()
if pid == 0:
    socket.socket().connect(("192.168.77.5", 80))
    os._exit(0)
time.sleep(0.5)
os.kill(pid, 9)
os.waitpid(pid, 0)
# tapwire (our parent) must stay idle meanwhile: no spinning on the dead notification.
def cpu(p):
    f = open("/proc/%d/stat" % p).read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
tw = os.getppid()
c0 = cpu(tw)
time.sleep(2)
res["idle_ticks"] = cpu(tw) - c0
s = socket.create_connection(("10.0.2.2", port), timeout=10)
res["after"] = s.getsockname()[0]
emit(**res)
