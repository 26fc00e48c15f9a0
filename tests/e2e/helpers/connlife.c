/* Drives the life cycles of socket fds that the agent must follow (issue 10, connection
 * table): each mode does one thing to tracked fds and prints, as one JSON line, the local
 * ports of its connections and what it sent on each, so the test can compare with the
 * agent's connection records and stream dumps.
 *
 *   connlife dup2 PORT         A and B connected; dup2(B, A); send on A; close(B); send on A
 *   connlife dup3 PORT         the same with dup3(B, A, O_CLOEXEC)
 *   connlife close_range PORT N   N connections; close_range(first, ~0U, 0); a pipe on the
 *                              first fd number, written to; then a new connection
 *   connlife exit PORT N       N connections, data sent, _exit(0) without closing them
 *   connlife exec PORT         a SOCK_CLOEXEC connection, then execve of itself (mode noop)
 *   connlife reuse PORT        connect, send, close; connect again (same fd number), send
 *   connlife uring_close PORT  connect, send, close the fd with IORING_OP_CLOSE (no close(2));
 *                              a pipe on the same fd number, written to
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int port;

static int dial(int flags)
{
	int s = socket(AF_INET, SOCK_STREAM | flags, 0);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) {
		perror("connect");
		exit(10);
	}
	return s;
}

static int local_port(int s)
{
	struct sockaddr_in l;
	socklen_t n = sizeof l;
	getsockname(s, (struct sockaddr *)&l, &n);
	return ntohs(l.sin_port);
}

static void put(int fd, const char *m)
{
	if (write(fd, m, strlen(m)) != (long)strlen(m)) {
		perror("write");
		exit(11);
	}
}

/* One request through a raw io_uring (no liburing); returns its result. */
static int uring_one(unsigned char opcode, int fd)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	int ring = syscall(__NR_io_uring_setup, 4, &p);
	if (ring < 0) {
		perror("io_uring_setup");
		exit(12);
	}
	size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if (cq_sz > sq_sz)
		sq_sz = cq_sz;
	char *sq = mmap(0, sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
	char *cq = (p.features & IORING_FEAT_SINGLE_MMAP) ? sq
		 : mmap(0, cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
	struct io_uring_sqe *sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
		exit(13);
	unsigned *tailp = (unsigned *)(sq + p.sq_off.tail), mask = *(unsigned *)(sq + p.sq_off.ring_mask);
	unsigned *array = (unsigned *)(sq + p.sq_off.array);
	unsigned tail = *tailp, idx = tail & mask;
	struct io_uring_sqe *e = &sqes[idx];
	memset(e, 0, sizeof *e);
	e->opcode = opcode;
	e->fd = fd;
	e->user_data = 7;
	array[idx] = idx;
	__atomic_store_n(tailp, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) {
		perror("io_uring_enter");
		exit(14);
	}
	unsigned *headp = (unsigned *)(cq + p.cq_off.head), cmask = *(unsigned *)(cq + p.cq_off.ring_mask);
	struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	unsigned head = *headp;
	if (head == __atomic_load_n((unsigned *)(cq + p.cq_off.tail), __ATOMIC_ACQUIRE))
		exit(15);
	int res = cqes[head & cmask].res;
	__atomic_store_n(headp, head + 1, __ATOMIC_RELEASE);
	close(ring);
	return res;
}

/* A pipe whose write end gets fd number `want` (the lowest free one), written to. */
static void pipe_on(int want, const char *m)
{
	int p[2];
	if (pipe(p))
		exit(16);
	int w = p[1];
	if (p[0] == want) { /* the read end took it: swap so the write end is `want` */
		int t = dup(p[0]);
		close(p[0]);
		if (dup2(p[1], want) != want)
			exit(17);
		close(p[1]);
		w = want;
		p[0] = t;
	}
	if (w != want) {
		fprintf(stderr, "pipe got fd %d, wanted %d\n", w, want);
		exit(18);
	}
	put(w, m);
	close(w);
	close(p[0]);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	const char *mode = argv[1];
	port = atoi(argv[2]);
	int n = argc > 3 ? atoi(argv[3]) : 1;
	if (!strcmp(mode, "noop")) {
		usleep(300000);
		return 0;
	}
	if (!strcmp(mode, "dup2") || !strcmp(mode, "dup3")) {
		int a = dial(0);
		put(a, "A1 on the old connection\n");
		int b = dial(0);
		put(b, "B1 on the new connection\n");
		int ap = local_port(a), bp = local_port(b);
		int r = !strcmp(mode, "dup2") ? dup2(b, a) : dup3(b, a, O_CLOEXEC);
		if (r != a)
			return 3;
		put(a, "B2 through the old fd number\n");
		close(b);
		put(a, "B3 after the new socket's own fd closed\n");
		close(a);
		printf("{\"pid\": %d, \"a_port\": %d, \"b_port\": %d, \"a_sent\": \"A1 on the old connection\\n\", "
		       "\"b_sent\": \"B1 on the new connection\\nB2 through the old fd number\\nB3 after the new socket's own fd closed\\n\"}\n",
		       getpid(), ap, bp);
		return 0;
	}
	if (!strcmp(mode, "close_range")) {
		int fds[64], ports[64];
		if (n > 64)
			return 2;
		for (int i = 0; i < n; i++) {
			fds[i] = dial(0);
			ports[i] = local_port(fds[i]);
			char m[64];
			snprintf(m, sizeof m, "connection %d before close_range\n", i);
			put(fds[i], m);
		}
		if (syscall(SYS_close_range, fds[0], ~0U, 0))
			return 4;
		pipe_on(fds[0], "pipe bytes, never a connection's\n");
		int c = dial(0);
		put(c, "a new connection after close_range\n");
		printf("{\"pid\": %d, \"fds\": [", getpid());
		for (int i = 0; i < n; i++)
			printf("%s%d", i ? ", " : "", fds[i]);
		printf("], \"ports\": [");
		for (int i = 0; i < n; i++)
			printf("%s%d", i ? ", " : "", ports[i]);
		printf("], \"new_fd\": %d, \"new_port\": %d}\n", c, local_port(c));
		close(c);
		return 0;
	}
	if (!strcmp(mode, "exit")) {
		printf("{\"pid\": %d, \"ports\": [", getpid());
		for (int i = 0; i < n; i++) {
			int s = dial(0);
			char m[64];
			snprintf(m, sizeof m, "connection %d, left open at exit\n", i);
			put(s, m);
			printf("%s%d", i ? ", " : "", local_port(s));
		}
		printf("]}\n");
		fflush(stdout);
		_exit(0);
	}
	if (!strcmp(mode, "exec")) {
		int s = dial(SOCK_CLOEXEC);
		put(s, "sent before execve\n");
		printf("{\"pid\": %d, \"port\": %d}\n", getpid(), local_port(s));
		fflush(stdout);
		/* the same program (not filtered out by the test's config), doing nothing */
		execl("/proc/self/exe", "connlife", "noop", "0", (char *)NULL);
		return 5;
	}
	if (!strcmp(mode, "reuse")) {
		int a = dial(0);
		int ap = local_port(a);
		put(a, "first connection\n");
		close(a);
		int b = dial(0);
		if (b != a)
			return 6;
		put(b, "second connection, same fd number\n");
		printf("{\"pid\": %d, \"fd\": %d, \"a_port\": %d, \"b_port\": %d}\n", getpid(), b, ap, local_port(b));
		close(b);
		return 0;
	}
	if (!strcmp(mode, "uring_close")) {
		int s = dial(0);
		int sp = local_port(s);
		put(s, "before the io_uring close\n");
		int r = uring_one(IORING_OP_CLOSE, s);
		if (r != 0) {
			fprintf(stderr, "io_uring close: %d\n", r);
			return 7;
		}
		pipe_on(s, "pipe bytes on the reused fd number\n");
		printf("{\"pid\": %d, \"fd\": %d, \"port\": %d}\n", getpid(), s, sp);
		return 0;
	}
	return 2;
}
