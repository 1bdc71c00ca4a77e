/*
 * sharedllm-relay: moves bytes between two connected sockets, inherited as fds 3 and 4, until
 * both directions are closed. The tunnel authenticates a connection in Node, then hands both
 * sockets to this process so that the hot path (llama.cpp RPC: many small round trips per token)
 * costs one poll wake-up and one read/write per chunk instead of a trip through the event loop.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (1 << 20)
static char buf[2][BUF];

static int write_all(int fd, const char *p, ssize_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, (size_t)n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pfd = {fd, POLLOUT, 0};
        poll(&pfd, 1, -1);
        continue;
      }
      return -1;
    }
    p += w;
    n -= w;
  }
  return 0;
}

int main(void) {
  int fds[2] = {3, 4};
  int one = 1;
  for (int i = 0; i < 2; i++) setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int open_in[2] = {1, 1}; /* whether fds[i] may still be read */
  unsigned long long moved[2] = {0, 0}; /* bytes read from fds[i] and written to the other */
  while (open_in[0] || open_in[1]) {
    struct pollfd p[2];
    for (int i = 0; i < 2; i++) {
      p[i].fd = open_in[i] ? fds[i] : -1;
      p[i].events = POLLIN;
      p[i].revents = 0;
    }
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    for (int i = 0; i < 2; i++) {
      if (!open_in[i] || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i], buf[i], BUF);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        /* this side is done sending: pass the half-close on */
        open_in[i] = 0;
        shutdown(fds[1 - i], SHUT_WR);
        if (n < 0) open_in[0] = open_in[1] = 0;
        continue;
      }
      if (write_all(fds[1 - i], buf[i], n) < 0) {
        open_in[0] = open_in[1] = 0;
        break;
      }
      moved[i] += (unsigned long long)n;
    }
  }
  /* the tunnel counts what went through (e.g. weights sent to a worker) */
  fprintf(stderr, "moved %llu %llu\n", moved[0], moved[1]);
  return 0;
}
