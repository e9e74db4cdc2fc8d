/*
 * twb: the small C-speed load generators of scripts/bench.sh (python is too slow to be fair
 * at tens of thousands of connections per second).
 *
 *   twb serve PORT REPLY_BYTES      accept on 0.0.0.0:PORT (epoll); on each connection read a
 *                                   request, write REPLY_BYTES and close; a connection that
 *                                   sends nothing is held open until its peer closes.
 *   twb crr HOST PORT SECS CONC REQ_BYTES
 *                                   connect/request/response/close loop with CONC connections
 *                                   in flight for SECS seconds; prints
 *                                   "conns=N secs=S rate=R errors=E".
 *   twb hold HOST PORT N INFLIGHT   open N idle connections (at most INFLIGHT connecting at
 *                                   once), print "held=N errors=E secs=S", then keep them open
 *                                   until killed.
 *
 * Build: cc -O2 -o twb twb.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void raise_nofile(void)
{
	struct rlimit r;
	if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
		r.rlim_cur = r.rlim_max;
		setrlimit(RLIMIT_NOFILE, &r);
	}
}

static struct sockaddr_in addr_of(const char *host, const char *port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(port));
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", host);
		exit(2);
	}
	return a;
}

static int serve(int port, int reply_len)
{
	char buf[4096], reply[65536];
	int one = 1, ep, l;
	struct sockaddr_in a;
	struct epoll_event ev, evs[256];

	if (reply_len > (int)sizeof reply)
		reply_len = sizeof reply;
	memset(reply, 'r', sizeof reply);
	l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l < 0)
		die("socket");
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	if (bind(l, (struct sockaddr *)&a, sizeof a) < 0)
		die("bind");
	if (listen(l, 4096) < 0)
		die("listen");
	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.events = EPOLLIN;
	ev.data.fd = l;
	epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == l) {
				for (;;) {
					int c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (c < 0)
						break;
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					ev.events = EPOLLIN | EPOLLRDHUP;
					ev.data.fd = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				}
				continue;
			}
			ssize_t r = read(fd, buf, sizeof buf);
			if (r > 0) {
				ssize_t w = write(fd, reply, reply_len);
				(void)w;
			}
			if (r > 0 || r == 0 || (r < 0 && errno != EAGAIN)) {
				close(fd); /* epoll forgets closed fds */
			}
		}
	}
	return 0;
}

enum { IDLE, CONNECTING, READING };
struct slot {
	int fd, state;
	size_t got;
};

static int start_conn(int ep, struct sockaddr_in *a, struct slot *s, int idx)
{
	struct epoll_event ev;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(fd, (struct sockaddr *)a, sizeof *a) < 0 && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	s->fd = fd;
	s->state = CONNECTING;
	s->got = 0;
	ev.events = EPOLLOUT;
	ev.data.u32 = idx;
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	return 0;
}

static int crr(const char *host, const char *port, double secs, int conc, int req_len)
{
	struct sockaddr_in a = addr_of(host, port);
	struct slot *slots = calloc(conc, sizeof *slots);
	struct epoll_event ev, evs[256];
	char req[4096], buf[65536];
	long done = 0, errors = 0;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	double t0 = now(), end = t0 + secs;

	if (req_len < 1)
		req_len = 1;
	if (req_len > (int)sizeof req)
		req_len = sizeof req;
	memset(req, 'q', sizeof req);
	for (int i = 0; i < conc; i++)
		if (start_conn(ep, &a, &slots[i], i) < 0)
			errors++;
	while (now() < end) {
		int n = epoll_wait(ep, evs, 256, 50);
		for (int i = 0; i < n; i++) {
			int idx = evs[i].data.u32;
			struct slot *s = &slots[idx];
			int fail = 0, fin = 0;
			if (s->state == CONNECTING) {
				int err = 0;
				socklen_t el = sizeof err;
				getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
				if (err || write(s->fd, req, req_len) != req_len) {
					fail = 1;
				} else {
					s->state = READING;
					ev.events = EPOLLIN;
					ev.data.u32 = idx;
					epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
				}
			} else if (s->state == READING) {
				for (;;) {
					ssize_t r = read(s->fd, buf, sizeof buf);
					if (r > 0) {
						s->got += r;
						continue;
					}
					if (r == 0)
						fin = 1;
					else if (errno != EAGAIN)
						fail = 1;
					break;
				}
				if (fin && s->got == 0)
					fail = 1;
			}
			if (fail || fin) {
				close(s->fd);
				s->state = IDLE;
				if (fail)
					errors++;
				else
					done++;
				if (start_conn(ep, &a, s, idx) < 0)
					errors++;
			}
		}
	}
	double t = now() - t0;
	printf("conns=%ld secs=%.3f rate=%.1f errors=%ld\n", done, t, done / t, errors);
	return 0;
}

static int hold(const char *host, const char *port, int n, int inflight)
{
	struct sockaddr_in a = addr_of(host, port);
	struct epoll_event ev, evs[256];
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int started = 0, pending = 0, held = 0, errors = 0;
	int *fds = calloc(n, sizeof *fds);
	double t0 = now();

	while (held + errors < n) {
		while (started < n && pending < inflight) {
			int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			if (fd < 0) {
				perror("socket");
				errors += n - started;
				started = n;
				break;
			}
			if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
				close(fd);
				errors++;
				started++;
				continue;
			}
			fds[started] = fd;
			ev.events = EPOLLOUT;
			ev.data.u32 = started;
			epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			started++;
			pending++;
		}
		if (now() - t0 > 120) {
			fprintf(stderr, "hold: timeout with %d pending\n", pending);
			errors += n - held - errors;
			break;
		}
		int m = epoll_wait(ep, evs, 256, 1000);
		for (int i = 0; i < m; i++) {
			int idx = evs[i].data.u32, err = 0;
			socklen_t el = sizeof err;
			getsockopt(fds[idx], SOL_SOCKET, SO_ERROR, &err, &el);
			epoll_ctl(ep, EPOLL_CTL_DEL, fds[idx], NULL);
			pending--;
			if (err) {
				close(fds[idx]);
				errors++;
			} else {
				held++;
			}
		}
	}
	printf("held=%d errors=%d secs=%.3f\n", held, errors, now() - t0);
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}

int main(int argc, char **argv)
{
	raise_nofile();
	if (argc == 4 && !strcmp(argv[1], "serve"))
		return serve(atoi(argv[2]), atoi(argv[3]));
	if (argc == 7 && !strcmp(argv[1], "crr"))
		return crr(argv[2], argv[3], atof(argv[4]), atoi(argv[5]), atoi(argv[6]));
	if (argc == 6 && !strcmp(argv[1], "hold"))
		return hold(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
	fprintf(stderr, "usage: twb serve PORT REPLY | crr HOST PORT SECS CONC REQ | hold HOST PORT N INFLIGHT\n");
	return 2;
}
