
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sockaddr_in a = {0}, me;
    socklen_t ml = sizeof me;
    long n = atol(argv[3]);
    static char buf[65536];
    char go[2];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (argc != 4) return 2;
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    getsockname(fd, (struct sockaddr *)&me, &ml);
    fprintf(stderr, "client local %s:%d\n", inet_ntoa(me.sin_addr), ntohs(me.sin_port));
    if (read(fd, go, 2) != 2) { perror("go"); return 1; }
    for (long i = 0; i < (long)sizeof buf; i++) buf[i] = (char)(i * 7 + 3);
    while (n > 0) {
        long k = n < (long)sizeof buf ? n : (long)sizeof buf;
        long w = write(fd, buf, k);
        if (w <= 0) { perror("write"); return 1; }
        n -= w;
    }
    shutdown(fd, SHUT_WR);
    for (;;) {
        long r = read(fd, buf, sizeof buf);
        if (r < 0) { perror("read"); return 1; }
        if (r == 0) break;
        if (fwrite(buf, 1, r, stdout) != (size_t)r) return 1;
    }
    return 0;
}
