
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in target;
static struct sockaddr_in choices[3];
static volatile int stop;
static volatile unsigned long flips;

static void *flip(void *arg) {
    unsigned i = 0;
    volatile struct sockaddr_in *t = &target;
    (void)arg;
    while (!stop) {
        const struct sockaddr_in *c = &choices[i++ % 3];
        t->sin_port = c->sin_port;
        t->sin_addr.s_addr = c->sin_addr.s_addr;
        flips++;
    }
    return NULL;
}

static void set(struct sockaddr_in *a, const char *ip, int port) {
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a->sin_addr);
}

int main(int argc, char **argv) {
    int rounds = atoi(argv[3]), ok = 0, refused = 0, unreach = 0, other = 0;
    pthread_t t;
    set(&choices[0], "192.168.77.2", atoi(argv[1]));
    set(&choices[1], "127.0.0.1", atoi(argv[2]));
    set(&choices[2], "10.0.2.2", atoi(argv[2]));
    target = choices[0];
    pthread_create(&t, NULL, flip, NULL);
    for (int i = 0; i < rounds; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&target, sizeof target) == 0) ok++;
        else if (errno == ECONNREFUSED) refused++;
        else if (errno == ENETUNREACH) unreach++;
        else other++;
        close(fd);
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("{\"ok\": %d, \"refused\": %d, \"unreach\": %d, \"other\": %d, \"flips\": %lu}\n", ok, refused, unreach, other, flips);
    return 0;
}
