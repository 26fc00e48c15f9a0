// SPDX-License-Identifier: GPL-2.0
/* plaintap kernel capture: TCP connections and the bytes on them, from tracepoints only.
 *
 * This kernel has no kprobes and refuses fentry, so everything here hangs off stable
 * tracepoints: syscall enter/exit for connect/accept/close and the data syscalls,
 * sock/inet_sock_set_state for TCP state, sched exec/exit for process attribution.
 *
 * BPF copies, Python thinks: a connection is tracked (conns map, keyed by tgid+fd) only
 * once it passes the loopback/direction filters; every data syscall bails out on the
 * first map miss, so untraced processes and sockets cost one hash lookup. Tracked data is
 * copied in DATA_CHUNK pieces with its per-flow byte offset, so user space reassembles
 * exactly and sees any loss as an explicit gap.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define EINPROGRESS 115
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define IPPROTO_TCP 6
#define MAX_IOV 64
#define MAX_MMSG 1024 /* UIO_MAXIOV: the kernel caps sendmmsg/recvmmsg's vlen there too */


struct sk_ref {
	__u64 conn_id;
	__u32 tgid;
	__s32 fd;
};

/* Data ring: EV_DATA and EV_GAP. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 32 * 1024 * 1024); /* user space may resize before load */
} events SEC(".maps");

/* Control ring: every other event. Data floods fill `events`, never this one. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024); /* user space may resize before load */
} control SEC(".maps");

/* Exec wake-ups: one ev_header (EV_PROC_EXEC, pid, ts) per traced exec, read by the
 * agent's TLS thread alone, so a new program's hooks need neither the capture loop nor
 * its GIL. Best effort: the control ring's exec stays authoritative (a full ring here
 * only delays hooking until the capture loop reaches that exec). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} exec_wake SEC(".maps");

/* A plain hash, not an LRU: an LRU evicts tracked connections silently; a full hash
 * refuses new ones, and each refusal is counted (CNT_CONN_TABLE_FULL). Sized by user
 * space before load (--max-connections). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct conn_key);
	__type(value, struct conn);
} conns SEC(".maps");

/* struct sock * -> its connection, for TCP state changes. A plain hash for the same reason
 * as `conns` (sized with it): a full table is counted (CNT_SOCKS_TABLE_FULL), never evicts. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64); /* struct sock * */
	__type(value, struct sk_ref);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} next_conn_id SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ev_proc_exec);
} exec_scratch SEC(".maps");

/* ---- TLS state ---- */

/* A TLS library call in progress on a thread (SSL_read/SSL_write and the _ex variants). */
struct tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 ex_len_ptr;  /* size_t * for the _ex variants, else 0 */
	__s32 fd;          /* learned from the syscall nested in the call, -1 until then */
	__u8 flow;
	__u8 is_ex;
	__u8 depth;        /* nested hooked calls (SSL_read inside SSL_read_ex) are not captured twice */
	__u8 _pad;
};

/* LRU, and emptied at thread exit: a thread killed inside SSL_read never returns. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

struct ssl_key {
	__u32 tgid;
	__u32 _pad;
	__u64 ssl;
};

/* tap.filters, per process (PF_* bits); user space writes, process exit deletes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} proc_filters SEC(".maps");

/* Last socket an SSL* used: serves reads answered from the library's buffer (no syscall).
 * The connection id is kept with the fd and checked at each use: a server that frees an
 * SSL* and gets the same address for the next client, whose old fd was closed or now
 * names another connection, must not have one client's plaintext recorded under another
 * connection (the stale entry is dropped and counted, CNT_SSL_FD_STALE). */
struct ssl_fd {
	__s32 fd;
	__u32 _pad;
	__u64 conn_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ssl_key);
	__type(value, struct ssl_fd);
} ssl_fds SEC(".maps");

struct thread_fd_t {
	__u64 ts_ns;
	__s32 fd;
	__u32 _pad;
};

/* Last tracked socket a thread read from: event-loop runtimes (Node) feed the TLS library
 * from memory right after reading the socket, with no syscall inside SSL_read. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct thread_fd_t);
} thread_fd SEC(".maps");

struct go_read_key {
	__u32 tgid;
	__u32 _pad;
	__u64 g;           /* the goroutine (R14 under Go's register ABI): stable across thread moves */
};

struct go_read_call {
	__u64 conn;
	__u64 buf;
	__u32 offsets_idx;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct go_read_key);
	__type(value, struct go_read_call);
} go_reads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct go_offsets);
} go_offsets_map SEC(".maps");

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += n;
}

/* Every non-data event goes out through here, on the control ring. */
static __always_inline void control_out(void *ev, __u64 size)
{
	if (bpf_ringbuf_output(&control, ev, size, 0))
		count(CNT_CONTROL_DROPS, 1);
}

/* Per-process byte budgets: a token bucket per tgid (settings budget_rate/budget_burst). */
struct budget {
	__u64 tokens;
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct budget);
} proc_budget SEC(".maps");

/* The agent's own TCP sockets (struct sock *), marked when they start connecting, and
 * the 4-tuples they established with: an accept() on this host whose peer is one of
 * them is the other end of the agent's own traffic (a same-host collector) and is not
 * tracked, so exports never come back as captured traffic. */
struct tuple_key {
	__u8 saddr[16];         /* v4 (also v4-mapped v6) in the first 4 bytes, rest zero */
	__u8 daddr[16];
	__u16 sport;            /* host order */
	__u16 dport;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, __u8);
} agent_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct tuple_key);
	__type(value, __u8);
} agent_tuples SEC(".maps");

static __always_inline struct settings *get_settings(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings_map, &zero);
}

/* True for every process except the agent itself. */
static __always_inline bool should_trace(__u32 tgid)
{
	struct settings *s = get_settings();
	return s && tgid != s->agent_pid;
}

static __always_inline __u32 proc_filter(__u32 tgid)
{
	__u32 *f = bpf_map_lookup_elem(&proc_filters, &tgid);
	return f ? *f : 0;
}

static __always_inline struct conn *tracked_conn(__u32 tgid, __s32 fd)
{
	struct conn_key k = { .tgid = tgid, .fd = fd };
	return bpf_map_lookup_elem(&conns, &k);
}

/* task->files->fdt->fd[fd] of the current task, or NULL. */
static __always_inline struct file *file_of_fd(__s32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return NULL;
	struct file **fdarr = BPF_CORE_READ(fdt, fd);
	unsigned int max_fds = BPF_CORE_READ(fdt, max_fds);
	struct file *f = NULL;
	if (fd < 0 || (unsigned int)fd >= max_fds)
		return NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fdarr[fd]))
		return NULL;
	return f;
}

/* The inode number of the socket fd names, or 0 when fd names no socket. Socket inode
 * numbers count up (get_next_ino), so a new socket on a reused fd number has another one
 * even where its memory reuses the old socket's addresses. */
static __always_inline __u32 sock_ino_of_fd(__s32 fd)
{
	struct file *f = file_of_fd(fd);
	if (!f)
		return 0;
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	return (__u32)BPF_CORE_READ(inode, i_ino);
}

/* fd's file->private_data->sk (and the socket's inode number), or NULL when fd is not a socket. */
static __always_inline struct sock *sock_of_fd(__s32 fd, __u32 *ino)
{
	struct file *f = file_of_fd(fd);
	if (!f)
		return NULL;
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	*ino = (__u32)BPF_CORE_READ(inode, i_ino);
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

/* An address as the agent_tuples key holds it: v4 and v4-mapped v6 both as 4 bytes. */
static __always_inline void norm_addr(__u8 *dst, __u16 family, const __u8 *a)
{
	if (family == AF_INET6) {
		__u64 hi = 0;
		__builtin_memcpy(&hi, a, 8);
		if (!(hi == 0 && a[8] == 0 && a[9] == 0 && a[10] == 0xff && a[11] == 0xff)) {
			__builtin_memcpy(dst, a, 16);
			return;
		}
		a += 12;
	}
	__builtin_memcpy(dst, a, 4);
}

/* True when the peer of an accepted connection is one of the agent's own sockets. */
static __always_inline bool is_agent_peer(__u16 family, const __u8 *laddr, __u16 lport,
					  const __u8 *raddr, __u16 rport)
{
	struct tuple_key k = {};
	norm_addr(k.saddr, family, raddr);
	norm_addr(k.daddr, family, laddr);
	k.sport = rport;
	k.dport = lport;
	return bpf_map_lookup_elem(&agent_tuples, &k) != NULL;
}

static __always_inline bool is_loopback(__u16 family, const __u8 *a)
{
	if (family == AF_INET)
		return a[0] == 127;
	/* ::1 or ::ffff:127.x.x.x */
	__u64 hi = 0, lo = 0;
	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&lo, a + 8, 8);
	if (hi != 0)
		return false;
	if (lo == 0x0100000000000000ULL) /* ::1, little endian */
		return true;
	return a[8] == 0 && a[9] == 0 && a[10] == 0xff && a[11] == 0xff && a[12] == 127;
}

/* Private, loopback, link-local and CGNAT peers make a connection egress-internal. */
static __always_inline bool is_internal(__u16 family, const __u8 *a)
{
	const __u8 *v4 = a;
	if (family == AF_INET6) {
		__u64 hi = 0;
		__builtin_memcpy(&hi, a, 8);
		bool mapped = hi == 0 && a[8] == 0 && a[9] == 0 && a[10] == 0xff && a[11] == 0xff;
		if (!mapped) {
			if (is_loopback(family, a))
				return true;
			if ((a[0] & 0xfe) == 0xfc) /* fc00::/7 unique local */
				return true;
			if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) /* fe80::/10 */
				return true;
			return false;
		}
		v4 = a + 12;
	}
	if (v4[0] == 10 || v4[0] == 127)
		return true;
	if (v4[0] == 172 && (v4[1] & 0xf0) == 16)
		return true;
	if (v4[0] == 192 && v4[1] == 168)
		return true;
	if (v4[0] == 169 && v4[1] == 254)
		return true;
	if (v4[0] == 100 && (v4[1] & 0xc0) == 64)
		return true;
	return false;
}

/* ---- connection life cycle ----
 * An entry of `conns` names a socket by (tgid, fd), and fd numbers are reused. An entry
 * leaves the table when its fd stops naming that socket: close(2) (enter_close),
 * dup/dup2/dup3 putting another file on the fd, close_range(2), close-on-exec at execve,
 * process exit (all below), each counted by reason (CNT_UNTRACKED_*). Where a close
 * happened out of sight (io_uring's close, a racing thread), the data path still never
 * misattributes: live_conn() checks that the fd names the socket the entry was made for
 * (by inode number) and drops a stale entry (CLOSE_STALE). A dup of a tracked socket onto
 * another fd carries the same connection (same id) on the new fd; the connection ends
 * when its last fd goes (dup_refs). TCP_CLOSE alone does not untrack: the process may
 * still read what arrived before the FIN; user space finishes the connection a grace
 * period later, and the fd's close removes the entry. */

/* tgid -> number of its entries in `conns` (at least): close_range, exec and exit sweep
 * the table only for processes that have some. Sized with `conns` by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, __u64);
} proc_conns SEC(".maps");

/* conn id -> fds of the process that carry it, for connections on more than one fd, and
 * the `lost` books of those of its fds already gone (the last one reports the sum). */
struct dup_ref {
	__u64 refs;
	__u64 lost;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct dup_ref);
} dup_refs SEC(".maps");

static __always_inline void proc_conns_add(__u32 tgid)
{
	__u64 *n = bpf_map_lookup_elem(&proc_conns, &tgid);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return;
	}
	__u64 one = 1;
	if (bpf_map_update_elem(&proc_conns, &tgid, &one, BPF_NOEXIST)) {
		n = bpf_map_lookup_elem(&proc_conns, &tgid);
		if (n)
			__sync_fetch_and_add(n, 1);
		else
			count(CNT_PROC_TABLE_FULL, 1);
	}
}

static __always_inline void proc_conns_sub(__u32 tgid)
{
	__u64 *n = bpf_map_lookup_elem(&proc_conns, &tgid);
	if (n && *n > 0)
		__sync_fetch_and_add(n, -1);
}

/* One fd of a dup'ed connection goes, with its `lost` books: true when it was the last
 * one, and then *lost is the connection's whole count. */
static __always_inline bool last_dup_ref(__u64 id, __u64 *lost)
{
	struct dup_ref *r = bpf_map_lookup_elem(&dup_refs, &id);
	if (!r)
		return true;
	if ((__s64)__sync_fetch_and_add(&r->refs, -1) > 1) {
		__sync_fetch_and_add(&r->lost, *lost);
		return false;
	}
	*lost += r->lost;
	bpf_map_delete_elem(&dup_refs, &id);
	return true;
}

static __always_inline void count_untrack_reason(__u32 reason)
{
	switch (reason) {
	case CLOSE_DUP: count(CNT_UNTRACKED_DUP, 1); break;
	case CLOSE_RANGE: count(CNT_UNTRACKED_CLOSE_RANGE, 1); break;
	case CLOSE_EXEC: count(CNT_UNTRACKED_EXEC, 1); break;
	case CLOSE_EXIT: count(CNT_UNTRACKED_EXIT, 1); break;
	case CLOSE_STALE: count(CNT_UNTRACKED_STALE, 1); break;
	}
}

/* Remove fd's entry. The connection ends (EV_CONN_CLOSE) unless the socket is still on
 * another tracked fd of the process (a dup). */
static __always_inline void untrack(__u32 tgid, __s32 fd, struct conn *c, __u32 reason)
{
	struct conn cc = *c; /* the value's memory may be reused once deleted */
	struct conn_key k = { .tgid = tgid, .fd = fd };
	if (bpf_map_delete_elem(&conns, &k))
		return; /* a racing close removed it and reports it */
	count(CNT_CONNS_UNTRACKED, 1);
	count_untrack_reason(reason);
	proc_conns_sub(tgid);
	if ((cc.flags & CONN_DUP) && !last_dup_ref(cc.id, &cc.lost))
		return;
	struct ev_conn_close ev = {};
	ev.h.type = EV_CONN_CLOSE;
	ev.h.pid = tgid;
	ev.h.ts_ns = bpf_ktime_get_ns();
	ev.conn_id = cc.id;
	ev.bytes_sent = cc.sent;
	ev.bytes_recv = cc.recv;
	ev.tls_sent = cc.tls_sent;
	ev.tls_recv = cc.tls_recv;
	ev.lost = cc.lost;
	ev.fd = fd;
	ev.reason = reason;
	__u64 skey = cc.sk;
	struct sk_ref *ref = bpf_map_lookup_elem(&socks, &skey);
	if (ref && ref->conn_id == cc.id)
		bpf_map_delete_elem(&socks, &skey);
	control_out(&ev, sizeof(ev));
}

/* The tracked connection on fd, only while fd still names the socket it was tracked with.
 * A stale entry (its socket closed out of sight, the number now naming another file) is
 * untracked here, so its bytes are never attributed to the old connection. */
static __always_inline struct conn *live_conn(__u32 tgid, __s32 fd)
{
	struct conn *c = tracked_conn(tgid, fd);
	if (!c)
		return NULL;
	__u32 ino = sock_ino_of_fd(fd);
	if (ino && ino == c->ino)
		return c;
	if (ino && !c->ino) {
		/* adopted at start-up by user space, which wrote no inode: learned at first use */
		c->ino = ino;
		proc_conns_add(tgid);
		return c;
	}
	untrack(tgid, fd, c, CLOSE_STALE);
	return NULL;
}

/* dup/dup2/dup3 returned newfd, a copy of oldfd. Whatever newfd named before is closed:
 * its entry goes (CLOSE_DUP) unless it was the same socket; a tracked oldfd's connection
 * is carried on newfd too (same id, counted CNT_DUP_FOLLOWED). The two entries keep their
 * own byte counters from here: a process writing on both fds alternately gets offsets
 * that overlap (seen by user space as a reassembly conflict, not silent). */
static __always_inline void on_dup(__u32 tgid, __s32 oldfd, __s32 newfd)
{
	if (oldfd == newfd || newfd < 0)
		return;
	__u32 ino = sock_ino_of_fd(newfd);
	struct conn *old = tracked_conn(tgid, newfd);
	if (old) {
		if (ino && old->ino == ino)
			return; /* both fds already named this socket */
		untrack(tgid, newfd, old, CLOSE_DUP);
	}
	struct conn *src = live_conn(tgid, oldfd);
	if (!src)
		return;
	__u64 id = src->id;
	struct dup_ref *r = bpf_map_lookup_elem(&dup_refs, &id);
	if (r) {
		__sync_fetch_and_add(&r->refs, 1);
	} else {
		struct dup_ref two = { .refs = 2 };
		if (bpf_map_update_elem(&dup_refs, &id, &two, BPF_NOEXIST)) {
			count(CNT_DUP_UNFOLLOWED, 1);
			return;
		}
	}
	src->flags |= CONN_DUP;
	struct conn copy = *src;
	copy.lost = 0; /* the books so far stay with src's entry */
	struct conn_key k = { .tgid = tgid, .fd = newfd };
	if (bpf_map_update_elem(&conns, &k, &copy, BPF_NOEXIST)) {
		__u64 none = 0;
		last_dup_ref(id, &none);
		count(CNT_DUP_UNFOLLOWED, 1);
		return;
	}
	count(CNT_CONNS_TRACKED, 1);
	count(CNT_DUP_FOLLOWED, 1);
	proc_conns_add(tgid);
}

struct sweep {
	__u32 tgid;
	__u32 reason;
	__u32 left;   /* entries of tgid still to visit (from proc_conns): stop at 0 */
	__u32 _pad;
};

static long sweep_step(struct bpf_map *map, struct conn_key *key, struct conn *c, struct sweep *sw)
{
	if (key->tgid != sw->tgid)
		return 0;
	__s32 fd = key->fd;
	if (sw->reason != CLOSE_EXIT) {
		__u32 ino = sock_ino_of_fd(fd);
		if (ino && (ino == c->ino || !c->ino))
			goto next; /* still open */
	}
	untrack(sw->tgid, fd, c, sw->reason);
next:
	if (sw->left <= 1)
		return 1;
	sw->left--;
	return 0;
}

/* Untrack the process's entries whose fd no longer names their socket (close_range,
 * exec), or all of them (exit). Costs nothing for processes with no tracked fd. */
static __always_inline void sweep_conns(__u32 tgid, __u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&proc_conns, &tgid);
	if (!n || !*n)
		return;
	struct sweep sw = { .tgid = tgid, .reason = reason, .left = *n };
	bpf_for_each_map_elem(&conns, sweep_step, &sw, 0);
}

static __always_inline int on_dup_exit(long ret)
{
	if (ret < 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!bpf_map_lookup_elem(&proc_conns, &tgid))
		return 0; /* no tracked fd in this process: nothing to follow or close */
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	on_dup(tgid, PT_REGS_PARM1_CORE_SYSCALL(regs), ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_dup")
int exit_dup(struct trace_event_raw_sys_exit *ctx) { return on_dup_exit(ctx->ret); }
SEC("tracepoint/syscalls/sys_exit_dup2")
int exit_dup2(struct trace_event_raw_sys_exit *ctx) { return on_dup_exit(ctx->ret); }
SEC("tracepoint/syscalls/sys_exit_dup3")
int exit_dup3(struct trace_event_raw_sys_exit *ctx) { return on_dup_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_close_range")
int exit_close_range(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret == 0)
		sweep_conns(bpf_get_current_pid_tgid() >> 32, CLOSE_RANGE);
	return 0;
}

/* Called at sched_process_exit: once the last thread goes, the process's fds close. */
static __always_inline void forget_exited_conns(__u32 tgid)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return; /* other threads still hold the fd table */
	sweep_conns(tgid, CLOSE_EXIT);
	bpf_map_delete_elem(&proc_conns, &tgid);
}

/* Start tracking fd as a TCP connection (role: connect or accept) if the filters allow. */
static __always_inline void track_socket(void *ctx, __u32 tgid, __s32 fd, __u8 role)
{
	struct settings *s = get_settings();
	if (!s)
		return;
	__u32 ino = 0;
	struct sock *sk = sock_of_fd(fd, &ino);
	if (!sk)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return;
	if (BPF_CORE_READ(sk, sk_type) != SOCK_STREAM)
		return;

	struct ev_conn_open ev = {};
	ev.family = family;
	ev.role = role;
	ev.local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev.remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO(&ev.local_addr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&ev.remote_addr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&ev.local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&ev.remote_addr, sk, __sk_common.skc_v6_daddr);
	}
	if (role == ROLE_SERVER && is_agent_peer(family, ev.local_addr, ev.local_port, ev.remote_addr, ev.remote_port)) {
		count(CNT_AGENT_PEER_CONNS, 1);
		return;
	}
	if (s->ignore_loopback && is_loopback(family, ev.remote_addr)) {
		count(CNT_CONNS_FILTERED, 1);
		return;
	}
	if (role == ROLE_SERVER)
		ev.direction = DIR_INGRESS;
	else
		ev.direction = is_internal(family, ev.remote_addr) ? DIR_EGRESS_INTERNAL : DIR_EGRESS_EXTERNAL;
	if (!(s->direction_mask & ev.direction)) {
		count(CNT_CONNS_FILTERED, 1);
		return;
	}

	__u32 pf = proc_filter(tgid);
	if (pf & PF_SKIP_ALL) {
		count(CNT_PROCS_FILTERED, 1);
		return;
	}

	__u32 zero = 0;
	__u64 *idp = bpf_map_lookup_elem(&next_conn_id, &zero);
	if (!idp)
		return;
	__u64 id = __sync_fetch_and_add(idp, 1) + 1;

	struct conn c = { .id = id, .sk = (__u64)sk, .role = role, .direction = ev.direction,
			  .flags = (pf & PF_SKIP_DATA) ? CONN_NO_DATA : 0, .ino = ino };
	struct conn_key k = { .tgid = tgid, .fd = fd };
	struct conn *old = tracked_conn(tgid, fd);
	if (old) {
		/* connect() again on this fd: on the same socket still connecting (a second call
		 * that returns 0 once the handshake is done), the same connection; after the first
		 * attempt failed (the socket went through TCP_CLOSE, so its `socks` entry is gone)
		 * or on another socket, the old id ends here. */
		__u64 skey = (__u64)sk;
		struct sk_ref *ref = bpf_map_lookup_elem(&socks, &skey);
		if (old->ino == ino && ref && ref->conn_id == old->id)
			return;
		untrack(tgid, fd, old, CLOSE_STALE);
	}
	if (bpf_map_update_elem(&conns, &k, &c, BPF_NOEXIST)) {
		count(CNT_CONN_TABLE_FULL, 1);
		return;
	}
	count(CNT_CONNS_TRACKED, 1);
	proc_conns_add(tgid);
	struct sk_ref ref = { .conn_id = id, .tgid = tgid, .fd = fd };
	__u64 skey = (__u64)sk;
	if (bpf_map_update_elem(&socks, &skey, &ref, BPF_ANY))
		count(CNT_SOCKS_TABLE_FULL, 1);

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	ev.h.type = EV_CONN_OPEN;
	ev.h.pid = tgid;
	ev.h.ts_ns = bpf_ktime_get_ns();
	ev.conn_id = id;
	ev.tid = (__u32)pid_tgid;
	ev.fd = fd;
	ev.uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
	control_out(&ev, sizeof(ev));
}

/* Returns false when the gap event itself was lost (ring full): the caller then adds the
 * bytes to the connection's `lost` books, which user space reconciles at close. */
static __always_inline bool emit_gap(__u64 conn_id, __u32 tgid, __u64 offset, __u64 len,
				     __u8 flow, __u8 source, __u16 reason)
{
	struct ev_gap g = {};
	g.h.type = EV_GAP;
	g.h.pid = tgid;
	g.h.ts_ns = bpf_ktime_get_ns();
	g.conn_id = conn_id;
	g.offset = offset;
	g.len = len;
	g.flow = flow;
	g.source = source;
	g.reason = reason;
	if (bpf_ringbuf_output(&events, &g, sizeof(g), 0)) {
		count(CNT_RINGBUF_DROPS, 1);
		return false;
	}
	return true;
}

/* A gap whose reason is not a loss of the ring (chunk budget, read fault, mmsg…): when its
 * event is lost too, user space finds a hole it takes for a ring loss; so it is one, counted
 * as such, on the connection's books too. */
static __always_inline void gap_unreported(__u64 *lost, __u64 len)
{
	count(CNT_GAP_UNREPORTED_BYTES, len);
	__sync_fetch_and_add(lost, len);
}

/* State of one walk over a syscall's buffers, chunk by chunk, inside bpf_loop. */
struct walk {
	__u64 iov_ptr;     /* user iovec array, or 0 for a single buffer */
	__u64 iov_cnt;
	__u64 iov_idx;
	__u64 cur_base;    /* current buffer */
	__u64 cur_len;
	__u64 cur_pos;
	__u64 remaining;   /* bytes of the syscall's result not yet emitted */
	__u64 offset;      /* stream offset of the next byte */
	__u64 conn_id;
	__u32 tgid;
	__s32 fd;
	__u8 flow;
	__u8 source;
	__u8 gap_reason;   /* set when the walk stopped early */
	__u64 lost;        /* bytes of this walk reaching user space in no event (conn.lost) */
};

/* Scratch space for one walk and its data event (too big for the 512-byte stack). The
 * walk state lives in a map value, not on the stack, on purpose: the verifier then treats
 * it as unknown scalars and the bpf_loop callback converges in a few states. */
struct data_scratch_t {
	struct walk w;
	struct ev_data ev;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct data_scratch_t);
} data_scratch SEC(".maps");

static long walk_step(__u32 i, void *unused)
{
	__u32 zero = 0;
	struct data_scratch_t *sc = bpf_map_lookup_elem(&data_scratch, &zero);
	if (!sc)
		return 1;
	struct walk *w = &sc->w;
	struct ev_data *ev = &sc->ev;
	if (w->remaining == 0)
		return 1;
	if (w->cur_pos >= w->cur_len) {
		/* next iovec */
		if (!w->iov_ptr || w->iov_idx >= w->iov_cnt || w->iov_idx >= MAX_IOV) {
			w->gap_reason = GAP_READ_FAULT;
			return 1;
		}
		struct iovec iov = {};
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(w->iov_ptr + w->iov_idx * sizeof(iov)))) {
			w->gap_reason = GAP_READ_FAULT;
			return 1;
		}
		w->iov_idx++;
		w->cur_base = (__u64)iov.iov_base;
		w->cur_len = iov.iov_len;
		w->cur_pos = 0;
		return 0;
	}
	__u64 n = w->cur_len - w->cur_pos;
	if (n > w->remaining)
		n = w->remaining;
	if (n > DATA_CHUNK)
		n = DATA_CHUNK;
	__u32 len = n;
	asm volatile("" : "+r"(len));
	if (len > DATA_CHUNK || len == 0)
		return 1;
	ev->h.type = EV_DATA;
	ev->h.pid = w->tgid;
	ev->h.ts_ns = bpf_ktime_get_ns();
	ev->conn_id = w->conn_id;
	ev->offset = w->offset;
	ev->len = len;
	ev->flow = w->flow;
	ev->source = w->source;
	ev->fd = w->fd;
	if (bpf_probe_read_user(ev->data, len, (void *)(w->cur_base + w->cur_pos))) {
		count(CNT_READ_FAULTS, 1);
		if (!emit_gap(w->conn_id, w->tgid, w->offset, len, w->flow, w->source, GAP_READ_FAULT))
			gap_unreported(&w->lost, len);
	} else if (bpf_ringbuf_output(&events, ev, offsetof(struct ev_data, data) + len, 0)) {
		count(CNT_RINGBUF_DROPS, 1);
		count(CNT_RINGBUF_DROP_BYTES, len);
		w->lost += len;
		emit_gap(w->conn_id, w->tgid, w->offset, len, w->flow, w->source, GAP_RINGBUF_FULL);
	}
	w->cur_pos += len;
	w->offset += len;
	w->remaining -= len;
	return 0;
}

/* Charge a process's token bucket; false when it has not `cost` bytes left (shed). */
#define BUDGET_EVENT_COST 64 /* per call, so a flood of tiny writes is bounded too */

static __always_inline bool take_budget(struct settings *s, __u32 tgid, __u64 cost)
{
	if (!s->budget_rate)
		return true;
	__u64 now = bpf_ktime_get_ns();
	struct budget *b = bpf_map_lookup_elem(&proc_budget, &tgid);
	if (!b) {
		struct budget fresh = { .tokens = s->budget_burst, .last_ns = now };
		bpf_map_update_elem(&proc_budget, &tgid, &fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&proc_budget, &tgid);
		if (!b)
			return true;
	}
	__u64 elapsed = now - b->last_ns;
	if ((__s64)elapsed < 0)
		elapsed = 0;
	if (elapsed > (1ULL << 32)) /* 4.3 s: refills the bucket; keeps the product in 64 bits */
		elapsed = 1ULL << 32;
	__u64 tokens = b->tokens + elapsed * s->budget_rate / 1000000000ULL;
	if (tokens > s->budget_burst)
		tokens = s->budget_burst;
	b->last_ns = now;
	if (tokens < cost) {
		b->tokens = tokens;
		return false;
	}
	b->tokens = tokens - cost;
	return true;
}

/* Emit `total` bytes that a syscall moved, from a buffer or an iovec array. */
static __always_inline void emit_data(struct conn *c, __u32 tgid, __s32 fd, __u8 flow, __u8 source,
				      __u64 base, __u64 iov_ptr, __u64 iov_cnt, __u64 total)
{
	__u64 *ctr;
	if (source == SRC_TLS)
		ctr = flow == FLOW_SEND ? &c->tls_sent : &c->tls_recv;
	else
		ctr = flow == FLOW_SEND ? &c->sent : &c->recv;
	__u64 offset = __sync_fetch_and_add(ctr, total);
	struct settings *s = get_settings();
	if (!s || !s->capture_data || (c->flags & CONN_NO_DATA))
		return;
	if (!take_budget(s, tgid, total + BUDGET_EVENT_COST)) {
		count(CNT_BUDGET_SHED_CALLS, 1);
		count(CNT_BUDGET_SHED_BYTES, total);
		__sync_fetch_and_add(&c->lost, total);
		emit_gap(c->id, tgid, offset, total, flow, source, GAP_PROC_BUDGET);
		return;
	}
	__u32 zero = 0;
	struct data_scratch_t *sc = bpf_map_lookup_elem(&data_scratch, &zero);
	if (!sc)
		return;
	struct walk *w = &sc->w;
	w->iov_ptr = iov_ptr;
	w->iov_cnt = iov_cnt;
	w->iov_idx = 0;
	w->cur_base = base;
	w->cur_len = iov_ptr ? 0 : total;
	w->cur_pos = 0;
	w->remaining = total;
	w->offset = offset;
	w->conn_id = c->id;
	w->tgid = tgid;
	w->fd = fd;
	w->flow = flow;
	w->source = source;
	w->gap_reason = 0;
	w->lost = 0;
	__u32 budget = s->max_chunks + (iov_ptr ? MAX_IOV : 0);
	bpf_loop(budget, walk_step, NULL, 0);
	if (w->remaining) {
		if (!w->gap_reason) {
			w->gap_reason = GAP_CHUNK_BUDGET;
			count(CNT_CHUNK_BUDGET_GAPS, 1);
		}
		if (!emit_gap(c->id, tgid, w->offset, w->remaining, flow, source, w->gap_reason))
			gap_unreported(&c->lost, w->remaining);
	}
	if (w->lost)
		__sync_fetch_and_add(&c->lost, w->lost);
}

/* ---- data syscalls: one exit tracepoint each ----
 * The arguments come from the task's saved user registers at exit (bpf_task_pt_regs),
 * so there is no enter program and no per-call state: one tracepoint hit per call, and a
 * call already blocked when a connection starts being tracked (a recv in progress when
 * the agent adopts an existing connection) is still captured. */

#define K_READ   1 /* one buffer */
#define K_WRITE  2
#define K_READV  3 /* iovec array (readv, preadv2) */
#define K_WRITEV 4
#define K_RECVMSG 5 /* msghdr */
#define K_SENDMSG 6
#define K_RECVFROM 7 /* one buffer, flags in the 4th argument */
#define K_SENDFILE 8
#define K_SENDMMSG 9 /* mmsghdr array: bytes counted as a gap */
#define K_RECVMMSG 10

/* MSG_PEEK reads leave the bytes in the socket: the real read comes later and is the one
 * that counts (nginx peeks one byte to tell TLS from plain HTTP). Only calls that take
 * flags are tested: read(2) has three arguments, and its 4th register holds whatever the
 * caller left there. */
#define MSG_PEEK 2

struct mmsg_sum {
	__u64 vec;
	__u64 n;
	__u64 total;
};

static long mmsg_step(__u32 i, struct mmsg_sum *m)
{
	if (i >= m->n)
		return 1;
	__u32 len = 0;
	if (bpf_probe_read_user(&len, sizeof(len),
				(void *)(m->vec + (__u64)i * sizeof(struct mmsghdr) + offsetof(struct mmsghdr, msg_len))))
		return 1;
	m->total += len;
	return 0;
}

/* Bytes a call moved that are not copied (they do not pass through user memory, or the
 * call is not decoded): the stream offset advances and user space sees a gap naming why. */
static __always_inline void skip_as_gap(struct conn *c, __u32 tgid, __u8 flow, __u64 total, __u16 reason,
					__u32 counter)
{
	__u64 *ctr = flow == FLOW_SEND ? &c->sent : &c->recv;
	__u64 off = __sync_fetch_and_add(ctr, total);
	count(counter, 1);
	if (!(c->flags & CONN_TLS_INSPECTED) && !emit_gap(c->id, tgid, off, total, flow, SRC_SOCKET, reason))
		gap_unreported(&c->lost, total);
}

static __always_inline int on_data_exit(long ret, __u32 kind)
{
	if (ret <= 0)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__s32 fd = PT_REGS_PARM1_CORE_SYSCALL(regs);
	struct conn *c = live_conn(tgid, fd);
	if (!c)
		return 0;
	__u64 ptr = PT_REGS_PARM2_CORE_SYSCALL(regs);
	__u64 cnt = PT_REGS_PARM3_CORE_SYSCALL(regs);
	if ((kind == K_RECVFROM || kind == K_RECVMMSG) && (PT_REGS_PARM4_CORE_SYSCALL(regs) & MSG_PEEK))
		return 0;
	if (kind == K_RECVMSG && (cnt & MSG_PEEK))
		return 0;
	__u64 total = ret;
	if (kind == K_SENDMMSG || kind == K_RECVMMSG) {
		/* ret is a message count: the bytes are the sum of each message's msg_len. */
		struct mmsg_sum m = { .vec = ptr, .n = ret, .total = 0 };
		bpf_loop(MAX_MMSG, mmsg_step, &m, 0);
		if (kind == K_SENDMMSG)
			skip_as_gap(c, tgid, FLOW_SEND, m.total, GAP_SENDMMSG, CNT_SENDMMSG_GAPS);
		else
			skip_as_gap(c, tgid, FLOW_RECV, m.total, GAP_RECVMMSG, CNT_RECVMMSG_GAPS);
		return 0;
	}
	bool recv = kind == K_READ || kind == K_RECVFROM || kind == K_READV || kind == K_RECVMSG;
	if (kind != K_SENDFILE) {
		/* A syscall inside a TLS library call names the call's socket. */
		struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
		if (tc && tc->fd < 0) {
			tc->fd = fd;
			c->flags |= CONN_TLS_INSPECTED;
			struct ssl_key sk = { .tgid = tgid, .ssl = tc->ssl };
			struct ssl_fd sf = { .fd = fd, .conn_id = c->id };
			bpf_map_update_elem(&ssl_fds, &sk, &sf, BPF_ANY);
		}
	}
	if (recv) {
		struct thread_fd_t t = { .ts_ns = bpf_ktime_get_ns(), .fd = fd };
		bpf_map_update_elem(&thread_fd, &pid_tgid, &t, BPF_ANY);
	}
	if (c->flags & CONN_TLS_INSPECTED) {
		/* Plaintext comes from the TLS hooks: only count the ciphertext. */
		if (recv)
			__sync_fetch_and_add(&c->recv, total);
		else
			__sync_fetch_and_add(&c->sent, total);
		return 0;
	}
	switch (kind) {
	case K_READ:
	case K_RECVFROM:
		emit_data(c, tgid, fd, FLOW_RECV, SRC_SOCKET, ptr, 0, 0, total);
		break;
	case K_WRITE:
		emit_data(c, tgid, fd, FLOW_SEND, SRC_SOCKET, ptr, 0, 0, total);
		break;
	case K_READV:
		emit_data(c, tgid, fd, FLOW_RECV, SRC_SOCKET, 0, ptr, cnt, total);
		break;
	case K_WRITEV:
		emit_data(c, tgid, fd, FLOW_SEND, SRC_SOCKET, 0, ptr, cnt, total);
		break;
	case K_RECVMSG:
	case K_SENDMSG: {
		struct user_msghdr m = {};
		if (bpf_probe_read_user(&m, sizeof(m), (void *)ptr)) {
			count(CNT_READ_FAULTS, 1);
			break;
		}
		__u8 flow = kind == K_RECVMSG ? FLOW_RECV : FLOW_SEND;
		emit_data(c, tgid, fd, flow, SRC_SOCKET, 0, (__u64)m.msg_iov, m.msg_iovlen, total);
		break;
	}
	case K_SENDFILE:
		/* The bytes come from a file, not user memory: count them, mark them missing. */
		skip_as_gap(c, tgid, FLOW_SEND, total, GAP_SENDFILE, CNT_SENDFILE_GAPS);
		break;
	}
	return 0;
}

/* splice(fd_in, off_in, fd_out, off_out, len, flags): either end may be a tracked socket;
 * the bytes move through a pipe inside the kernel, so they are a gap on that socket. */
static __always_inline int on_splice_exit(long ret)
{
	if (ret <= 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__s32 fd_in = PT_REGS_PARM1_CORE_SYSCALL(regs);
	__s32 fd_out = PT_REGS_PARM3_CORE_SYSCALL(regs);
	struct conn *c = live_conn(tgid, fd_in);
	if (c)
		skip_as_gap(c, tgid, FLOW_RECV, ret, GAP_SPLICE, CNT_SPLICE_GAPS);
	c = live_conn(tgid, fd_out);
	if (c)
		skip_as_gap(c, tgid, FLOW_SEND, ret, GAP_SPLICE, CNT_SPLICE_GAPS);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int exit_read(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_READ); }
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int exit_recvfrom(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_RECVFROM); }
SEC("tracepoint/syscalls/sys_exit_write")
int exit_write(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_WRITE); }
SEC("tracepoint/syscalls/sys_exit_sendto")
int exit_sendto(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_WRITE); }
SEC("tracepoint/syscalls/sys_exit_readv")
int exit_readv(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_READV); }
SEC("tracepoint/syscalls/sys_exit_writev")
int exit_writev(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_WRITEV); }
SEC("tracepoint/syscalls/sys_exit_recvmsg")
int exit_recvmsg(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_RECVMSG); }
SEC("tracepoint/syscalls/sys_exit_sendmsg")
int exit_sendmsg(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_SENDMSG); }
SEC("tracepoint/syscalls/sys_exit_sendfile64")
int exit_sendfile(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_SENDFILE); }
SEC("tracepoint/syscalls/sys_exit_preadv2")
int exit_preadv2(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_READV); }
SEC("tracepoint/syscalls/sys_exit_pwritev2")
int exit_pwritev2(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_WRITEV); }
SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int exit_sendmmsg(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_SENDMMSG); }
SEC("tracepoint/syscalls/sys_exit_recvmmsg")
int exit_recvmmsg(struct trace_event_raw_sys_exit *ctx) { return on_data_exit(ctx->ret, K_RECVMMSG); }
SEC("tracepoint/syscalls/sys_exit_splice")
int exit_splice(struct trace_event_raw_sys_exit *ctx) { return on_splice_exit(ctx->ret); }

/* ---- io_uring: requests on tracked sockets are seen at submit and completion ----
 * The payload is not copied (the buffers belong to the ring's requests); each completion
 * that moved bytes becomes a gap naming io_uring, so the loss is counted and visible.
 * Requests on registered (fixed) files cannot be mapped to a socket: counted only. */

struct uring_req {
	__u64 conn_id;     /* the completion counts only if fd still carries this connection */
	__u32 tgid;
	__s32 fd;
	__u8 flow;
	__u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* struct io_kiocb * */
	__type(value, struct uring_req);
} uring_reqs SEC(".maps");

#define UR_NONE 0xff
#define REQ_F_FIXED_FILE 1
#define IORING_CQE_F_MORE 2

static __always_inline __u8 uring_flow(__u8 op)
{
	switch (op) {
	case 1: case 4: case 10: case 22: case 27: case 49: case 58: case 60: /* READV READ_FIXED RECVMSG READ RECV READ_MULTISHOT RECV_ZC READV_FIXED */
		return FLOW_RECV;
	case 2: case 5: case 9: case 23: case 26: case 30: case 47: case 48: case 61: /* WRITEV WRITE_FIXED SENDMSG WRITE SEND SPLICE SEND_ZC SENDMSG_ZC WRITEV_FIXED */
		return FLOW_SEND;
	}
	return UR_NONE;
}

SEC("tracepoint/io_uring/io_uring_submit_req")
int uring_submit(struct trace_event_raw_io_uring_submit_req *ctx)
{
	__u8 flow = uring_flow(ctx->opcode);
	if (flow == UR_NONE)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!should_trace(tgid))
		return 0;
	if (ctx->flags & REQ_F_FIXED_FILE) {
		count(CNT_IO_URING_FIXED, 1);
		return 0;
	}
	struct io_kiocb *req = ctx->req;
	if (!bpf_core_field_exists(req->cqe.fd))
		return 0;
	__s32 fd = BPF_CORE_READ(req, cqe.fd);
	struct conn *c = live_conn(tgid, fd);
	if (!c)
		return 0;
	struct uring_req r = { .conn_id = c->id, .tgid = tgid, .fd = fd, .flow = flow };
	__u64 key = (__u64)req;
	bpf_map_update_elem(&uring_reqs, &key, &r, BPF_ANY);
	return 0;
}

SEC("tracepoint/io_uring/io_uring_complete")
int uring_complete(struct trace_event_raw_io_uring_complete *ctx)
{
	__u64 key = (__u64)ctx->req;
	struct uring_req *r = bpf_map_lookup_elem(&uring_reqs, &key);
	if (!r)
		return 0;
	struct uring_req req = *r;
	if (!(ctx->cflags & IORING_CQE_F_MORE))
		bpf_map_delete_elem(&uring_reqs, &key);
	if (ctx->res <= 0)
		return 0;
	/* not live_conn: a completion may run outside the process (its fd table) */
	struct conn *c = tracked_conn(req.tgid, req.fd);
	if (c && c->id == req.conn_id)
		skip_as_gap(c, req.tgid, req.flow, ctx->res, GAP_IO_URING, CNT_IO_URING_GAPS);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	long ret = ctx->ret;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if ((ret != 0 && ret != -EINPROGRESS) || !should_trace(tgid))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	track_socket(NULL, tgid, PT_REGS_PARM1_CORE_SYSCALL(regs), ROLE_CLIENT);
	return 0;
}

static __always_inline int on_accept(long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (ret < 0 || !should_trace(tgid))
		return 0;
	track_socket(NULL, tgid, ret, ROLE_SERVER);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct trace_event_raw_sys_exit *ctx) { return on_accept(ctx->ret); }
SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct trace_event_raw_sys_exit *ctx) { return on_accept(ctx->ret); }

SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__s32 fd = ctx->args[0];
	struct conn *c = tracked_conn(tgid, fd);
	if (c)
		untrack(tgid, fd, c, CLOSE_SYSCALL);
	return 0;
}

/* The agent's own connections: a socket is marked when the agent starts connecting it
 * (SYN_SENT happens inside connect(), in the agent's context); once established, its
 * 4-tuple is recorded — before the final ACK leaves, so before the peer's accept() on
 * this host can return — and forgotten at close. */
static __always_inline void note_agent_socket(struct trace_event_raw_inet_sock_set_state *ctx, __u64 skey,
					      int newstate)
{
	if (newstate == TCP_SYN_SENT) {
		struct settings *s = get_settings();
		__u8 one = 1;
		if (s && (bpf_get_current_pid_tgid() >> 32) == s->agent_pid)
			bpf_map_update_elem(&agent_socks, &skey, &one, BPF_ANY);
		return;
	}
	if (!bpf_map_lookup_elem(&agent_socks, &skey))
		return;
	__u16 family = ctx->family;
	__u8 sa[16] = {}, da[16] = {};
	if (family == AF_INET) {
		bpf_probe_read_kernel(sa, 4, ctx->saddr);
		bpf_probe_read_kernel(da, 4, ctx->daddr);
	} else {
		bpf_probe_read_kernel(sa, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(da, 16, ctx->daddr_v6);
	}
	struct tuple_key k = {};
	norm_addr(k.saddr, family, sa);
	norm_addr(k.daddr, family, da);
	k.sport = ctx->sport;
	k.dport = ctx->dport;
	if (newstate == TCP_ESTABLISHED) {
		__u8 one = 1;
		bpf_map_update_elem(&agent_tuples, &k, &one, BPF_ANY);
	} else {
		bpf_map_delete_elem(&agent_tuples, &k);
		bpf_map_delete_elem(&agent_socks, &skey);
	}
}

SEC("tracepoint/sock/inet_sock_set_state")
int sock_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	int newstate = ctx->newstate;
	if (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE && newstate != TCP_SYN_SENT)
		return 0;
	__u64 skey = (__u64)ctx->skaddr;
	if (ctx->protocol == IPPROTO_TCP)
		note_agent_socket(ctx, skey, newstate);
	if (newstate == TCP_SYN_SENT)
		return 0;
	struct sk_ref *ref = bpf_map_lookup_elem(&socks, &skey);
	if (!ref)
		return 0;
	struct ev_sock_state ev = {};
	ev.h.type = EV_SOCK_STATE;
	ev.h.pid = ref->tgid;
	ev.h.ts_ns = bpf_ktime_get_ns();
	ev.conn_id = ref->conn_id;
	ev.oldstate = ctx->oldstate;
	ev.newstate = ctx->newstate;
	control_out(&ev, sizeof(ev));
	if (ctx->newstate == TCP_CLOSE)
		bpf_map_delete_elem(&socks, &skey);
	return 0;
}

/* ---- the agent's own tgid, as the kernel sees it ----
 * Inside a PID namespace the agent's getpid() is not the tgid the programs see. User space
 * writes its pid namespace (device, inode) and its pid there into the settings, attaches
 * this program alone, calls getppid() once and reads agent_pid back; the program is
 * detached before any other is attached. Only the process whose pid in that namespace
 * is the agent's can set it. */
SEC("tracepoint/syscalls/sys_enter_getppid")
int learn_self(void *ctx)
{
	struct settings *s = get_settings();
	if (!s || !s->agent_nspid)
		return 0;
	struct bpf_pidns_info ns = {};
	if (bpf_get_ns_current_pid_tgid(s->agent_pidns_dev, s->agent_pidns_ino, &ns, sizeof(ns)))
		return 0;
	if (ns.tgid == s->agent_nspid)
		s->agent_pid = bpf_get_current_pid_tgid() >> 32;
	return 0;
}

/* ---- processes: exec gives the path and argv even for processes gone in a millisecond ---- */

SEC("tracepoint/sched/sched_process_exec")
int proc_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	sweep_conns(tgid, CLOSE_EXEC); /* close-on-exec fds are closed by now */
	if (!should_trace(tgid))
		return 0;
	__u32 zero = 0;
	struct ev_proc_exec *ev = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!ev)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	ev->h.type = EV_PROC_EXEC;
	ev->h.pid = tgid;
	ev->h.ts_ns = bpf_ktime_get_ns();
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->uid = (__u32)bpf_get_current_uid_gid();
	unsigned int loc = ctx->__data_loc_filename & 0xFFFF;
	long n = bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), (void *)ctx + loc);
	ev->filename_len = n > 0 ? n - 1 : 0;
	unsigned long arg_start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(task, mm, arg_end);
	unsigned long alen = arg_end - arg_start;
	if (alen > EXEC_ARGS_MAX)
		alen = EXEC_ARGS_MAX;
	__u32 al = alen;
	asm volatile("" : "+r"(al));
	if (al > EXEC_ARGS_MAX)
		al = 0;
	if (al && bpf_probe_read_user(ev->args, al, (void *)arg_start))
		al = 0;
	ev->args_len = al;
	control_out(ev, sizeof(*ev));
	bpf_ringbuf_output(&exec_wake, &ev->h, sizeof(ev->h), 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int proc_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	/* Every exiting thread: a TLS call it was inside never returns (killed mid-read);
	 * left here, the entry would swallow the first call of a thread reusing the id. */
	bpf_map_delete_elem(&tls_calls, &pid_tgid);
	bpf_map_delete_elem(&thread_fd, &pid_tgid);
	forget_exited_conns(tgid);
	if ((__u32)pid_tgid != tgid)
		return 0; /* the rest only for the whole process, not each thread */
	bpf_map_delete_elem(&proc_filters, &tgid);
	bpf_map_delete_elem(&proc_budget, &tgid);
	if (!should_trace(tgid))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct ev_proc_exit ev = {};
	ev.h.type = EV_PROC_EXIT;
	ev.h.pid = tgid;
	ev.h.ts_ns = bpf_ktime_get_ns();
	ev.exit_code = BPF_CORE_READ(task, exit_code);
	control_out(&ev, sizeof(ev));
	return 0;
}

/* ---- TLS plaintext: OpenSSL-compatible libraries (libssl, Node's static OpenSSL) ----
 * Entry saves the call by thread; the nested read/write syscall (save_call) names the
 * socket; the return emits the plaintext. Cookie bit 0: the _ex variant, whose byte count
 * is written through its 4th argument. Attached by user space per library file. */

/* TLS hooks work for this process: not the agent, and tap.filters leave its plaintext. */
static __always_inline bool plaintext_traced(__u32 tgid)
{
	return should_trace(tgid) && !(proc_filter(tgid) & (PF_SKIP_ALL | PF_SKIP_DATA | PF_SKIP_TLS));
}

#define THREAD_FD_FRESH_NS 5000000ULL /* a socket read this recent fed the TLS library */

static __always_inline int ssl_enter(struct pt_regs *ctx, __u8 flow)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!plaintext_traced(pid_tgid >> 32))
		return 0;
	struct tls_call *cur = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	if (cur) {
		cur->depth++;
		return 0;
	}
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct tls_call tc = {
		.ssl = PT_REGS_PARM1(ctx), .buf = PT_REGS_PARM2(ctx),
		.ex_len_ptr = (cookie & 1) ? PT_REGS_PARM4(ctx) : 0,
		.fd = -1, .flow = flow, .is_ex = cookie & 1,
	};
	bpf_map_update_elem(&tls_calls, &pid_tgid, &tc, BPF_ANY);
	return 0;
}

static __always_inline int ssl_exit(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *cur = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	if (!cur)
		return 0;
	if (cur->depth) {
		cur->depth--;
		return 0;
	}
	struct tls_call tc = *cur;
	bpf_map_delete_elem(&tls_calls, &pid_tgid);
	__u32 tgid = pid_tgid >> 32;
	int rc = (int)PT_REGS_RC(ctx); /* SSL_read/SSL_write(_ex) return int: RAX's upper half is garbage */
	__u64 n = 0;
	if (tc.is_ex) {
		if (rc != 1 || bpf_probe_read_user(&n, sizeof(n), (void *)tc.ex_len_ptr))
			n = 0;
	} else if (rc > 0) {
		n = rc;
	}
	struct ssl_key sk = { .tgid = tgid, .ssl = tc.ssl };
	__s32 fd = tc.fd;
	if (fd < 0) {
		struct ssl_fd *known = bpf_map_lookup_elem(&ssl_fds, &sk);
		if (known) {
			struct conn *kc = live_conn(tgid, known->fd);
			if (kc && kc->id == known->conn_id) {
				fd = known->fd;
			} else {
				/* that socket was closed, or its fd now names another connection */
				bpf_map_delete_elem(&ssl_fds, &sk);
				count(CNT_SSL_FD_STALE, 1);
			}
		}
		if (fd < 0 && tc.flow == FLOW_RECV) {
			struct thread_fd_t *t = bpf_map_lookup_elem(&thread_fd, &pid_tgid);
			struct conn *tcn = t ? live_conn(tgid, t->fd) : NULL;
			if (t && tcn && bpf_ktime_get_ns() - t->ts_ns < THREAD_FD_FRESH_NS) {
				fd = t->fd;
				struct ssl_fd sf = { .fd = fd, .conn_id = tcn->id };
				bpf_map_update_elem(&ssl_fds, &sk, &sf, BPF_ANY);
			}
		}
	}
	if (n == 0)
		return 0;
	if (fd < 0) {
		count(CNT_TLS_NO_FD, 1);
		return 0;
	}
	struct conn *c = live_conn(tgid, fd);
	if (!c) {
		count(CNT_TLS_UNTRACKED, 1);
		return 0;
	}
	c->flags |= CONN_TLS_INSPECTED;
	emit_data(c, tgid, fd, tc.flow, SRC_TLS, tc.buf, 0, 0, n);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_enter) { return ssl_enter(ctx, FLOW_SEND); }

SEC("uprobe")
int BPF_KPROBE(ssl_read_enter) { return ssl_enter(ctx, FLOW_RECV); }

SEC("uretprobe")
int BPF_KRETPROBE(ssl_exit_probe) { return ssl_exit(ctx); }

/* ---- TLS plaintext: Go crypto/tls ----
 * Register ABI (Go >= 1.17): receiver in RAX, the []byte in RBX (ptr) and RCX (len),
 * results in RAX (n). (*Conn).Write is captured at entry (it writes all or fails);
 * (*Conn).Read at entry (buffer, keyed by goroutine) and at each RET instruction, never
 * with uretprobes, which break Go's moving stacks. The cookie indexes go_offsets_map. */

static __always_inline __s32 go_conn_fd(__u64 conn, __u32 idx)
{
	struct go_offsets *o = bpf_map_lookup_elem(&go_offsets_map, &idx);
	if (!o)
		return -1;
	__u64 data = 0, netfd = 0;
	__s64 sysfd = -1;
	if (bpf_probe_read_user(&data, sizeof(data), (void *)(conn + o->conn_iface_data)) || !data)
		return -1;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(data + o->tcpconn_fd)) || !netfd)
		return -1;
	if (bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + o->netfd_sysfd)))
		return -1;
	return (__s32)sysfd;
}

static __always_inline void go_emit(__u32 tgid, __u64 conn, __u32 idx, __u8 flow, __u64 buf, __u64 n)
{
	__s32 fd = go_conn_fd(conn, idx);
	if (fd < 0) {
		count(CNT_TLS_NO_FD, 1);
		return;
	}
	struct conn *c = live_conn(tgid, fd);
	if (!c) {
		count(CNT_TLS_UNTRACKED, 1);
		return;
	}
	c->flags |= CONN_TLS_INSPECTED;
	emit_data(c, tgid, fd, flow, SRC_TLS, buf, 0, 0, n);
}

SEC("uprobe")
int go_write_enter(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!plaintext_traced(tgid))
		return 0;
	__u64 n = ctx->cx;
	if ((__s64)n <= 0)
		return 0;
	go_emit(tgid, ctx->ax, (__u32)bpf_get_attach_cookie(ctx), FLOW_SEND, ctx->bx, n);
	return 0;
}

SEC("uprobe")
int go_read_enter(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!plaintext_traced(tgid))
		return 0;
	struct go_read_key k = { .tgid = tgid, .g = ctx->r14 };
	struct go_read_call v = { .conn = ctx->ax, .buf = ctx->bx, .offsets_idx = (__u32)bpf_get_attach_cookie(ctx) };
	bpf_map_update_elem(&go_reads, &k, &v, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_read_return(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_read_key k = { .tgid = tgid, .g = ctx->r14 };
	struct go_read_call *v = bpf_map_lookup_elem(&go_reads, &k);
	if (!v)
		return 0;
	struct go_read_call call = *v;
	bpf_map_delete_elem(&go_reads, &k);
	__s64 n = ctx->ax;
	if (n > 0)
		go_emit(tgid, call.conn, call.offsets_idx, FLOW_RECV, call.buf, n);
	return 0;
}

/* ---- DNS: UDP datagrams to or from port 53 ----
 * Separate programs on the same syscall tracepoints as the TCP capture above (a
 * tracepoint runs every program attached to it), so this section stands alone.
 *
 * A socket becomes a DNS socket when it sends to port 53 (sendto/sendmsg/sendmmsg with
 * an address) or is connect()ed to port 53 (glibc's and Go's resolvers connect); it is
 * remembered in `dns_socks` by (tgid, fd) with its struct sock *, which is checked at
 * each use (an fd closed and reused names another socket: dropped, counted). Receives
 * and address-less sends (write/send/sendto without address) are captured only on those
 * sockets, so every other call costs one hash lookup. Datagrams are copied whole up to
 * DGRAM_MAX from the first buffer (a datagram spread over several iovecs, or longer, is
 * cut and counted: CNT_DNS_CUT), charged to the process's byte budget, and go on the
 * control ring. Peer address: the call's sockaddr, else the connected socket's peer. */

/* LRU: a process that exits without closing leaves entries behind; the oldest go first.
 * An entry lost that way costs at most the capture of a later answer on that socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct conn_key);
	__type(value, __u64); /* struct sock * */
} dns_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ev_dgram);
} dgram_scratch SEC(".maps");

#define SOCK_DGRAM 2
#define DNS_PORT 53

/* DNS work for this process: not the agent, and tap.filters leave its DNS. */
static __always_inline bool dns_traced(__u32 tgid)
{
	return should_trace(tgid) && !(proc_filter(tgid) & (PF_SKIP_ALL | PF_SKIP_DNS));
}

/* A user sockaddr's family, port and address into ev's remote end; false when it is not
 * an IPv4/IPv6 address. */
static __always_inline bool dgram_peer_from_user(struct ev_dgram *ev, __u64 uaddr)
{
	__u16 family = 0;
	if (!uaddr || bpf_probe_read_user(&family, sizeof(family), (void *)uaddr))
		return false;
	if (family == AF_INET) {
		struct sockaddr_in sa = {};
		if (bpf_probe_read_user(&sa, sizeof(sa), (void *)uaddr))
			return false;
		__builtin_memset(ev->remote_addr, 0, 16);
		__builtin_memcpy(ev->remote_addr, &sa.sin_addr, 4);
		ev->remote_port = bpf_ntohs(sa.sin_port);
	} else if (family == AF_INET6) {
		struct sockaddr_in6 sa = {};
		if (bpf_probe_read_user(&sa, sizeof(sa), (void *)uaddr))
			return false;
		__builtin_memcpy(ev->remote_addr, &sa.sin6_addr, 16);
		ev->remote_port = bpf_ntohs(sa.sin6_port);
	} else {
		return false;
	}
	ev->family = family;
	return true;
}

/* The UDP socket behind fd (IPv4/IPv6 datagram), or NULL. */
static __always_inline struct sock *udp_sock_of_fd(__s32 fd)
{
	__u32 ino = 0;
	struct sock *sk = sock_of_fd(fd, &ino);
	if (!sk)
		return NULL;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	if (BPF_CORE_READ(sk, sk_type) != SOCK_DGRAM)
		return NULL;
	return sk;
}

/* Local end from the socket; remote end too unless the call named it (have_peer). */
static __always_inline void dgram_ends_from_sock(struct ev_dgram *ev, struct sock *sk, bool have_peer)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	ev->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	__builtin_memset(ev->local_addr, 0, 16);
	if (family == AF_INET)
		BPF_CORE_READ_INTO(&ev->local_addr, sk, __sk_common.skc_rcv_saddr);
	else
		BPF_CORE_READ_INTO(&ev->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
	if (have_peer && ev->family == AF_INET && family == AF_INET6) {
		/* an IPv4 sockaddr on an IPv6 socket cannot happen; keep the socket's family */
		have_peer = false;
	}
	if (have_peer && family == AF_INET && ev->family == AF_INET6)
		have_peer = false;
	if (!have_peer) {
		ev->family = family;
		ev->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		__builtin_memset(ev->remote_addr, 0, 16);
		if (family == AF_INET)
			BPF_CORE_READ_INTO(&ev->remote_addr, sk, __sk_common.skc_daddr);
		else
			BPF_CORE_READ_INTO(&ev->remote_addr, sk, __sk_common.skc_v6_daddr);
	}
}

/* Copy `total` bytes of one datagram from buf (at most buflen there) and send the event. */
static __always_inline void dgram_send(struct ev_dgram *ev, __u32 tgid, __u64 buf, __u64 buflen, __u64 total)
{
	struct settings *s = get_settings();
	if (!s)
		return;
	__u64 n = total < buflen ? total : buflen;
	if (n > DGRAM_MAX)
		n = DGRAM_MAX;
	if (n < total)
		count(CNT_DNS_CUT, 1);
	if (!take_budget(s, tgid, n + BUDGET_EVENT_COST)) {
		count(CNT_DNS_SHED, 1);
		return;
	}
	__u32 len = n;
	asm volatile("" : "+r"(len));
	if (len > DGRAM_MAX)
		return;
	if (len && bpf_probe_read_user(ev->data, len, (void *)buf)) {
		count(CNT_READ_FAULTS, 1);
		return;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	ev->h.type = EV_DGRAM;
	ev->h.pid = tgid;
	ev->h.ts_ns = bpf_ktime_get_ns();
	ev->tid = (__u32)pid_tgid;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->len = len;
	ev->orig_len = total > 0xffffffffULL ? 0xffffffffU : (__u32)total;
	ev->_pad0 = 0;
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	__u64 size = offsetof(struct ev_dgram, data) + len;
	if (size > sizeof(*ev))
		return;
	if (bpf_ringbuf_output(&control, ev, size, 0))
		count(CNT_CONTROL_DROPS, 1);
	else
		count(CNT_DNS_DGRAMS, 1);
}

static __always_inline struct ev_dgram *dgram_event(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&dgram_scratch, &zero);
}

/* The socket remembered for (tgid, fd), checked against the fd's socket now; NULL when
 * fd is not a DNS socket (or no longer the one remembered). */
static __always_inline struct sock *known_dns_sock(__u32 tgid, __s32 fd)
{
	struct conn_key k = { .tgid = tgid, .fd = fd };
	__u64 *known = bpf_map_lookup_elem(&dns_socks, &k);
	if (!known)
		return NULL;
	struct sock *sk = udp_sock_of_fd(fd);
	if (!sk || (__u64)sk != *known) {
		bpf_map_delete_elem(&dns_socks, &k);
		count(CNT_DNS_SOCK_STALE, 1);
		return NULL;
	}
	return sk;
}

static __always_inline void remember_dns_sock(__u32 tgid, __s32 fd, struct sock *sk)
{
	struct conn_key k = { .tgid = tgid, .fd = fd };
	__u64 v = (__u64)sk;
	bpf_map_update_elem(&dns_socks, &k, &v, BPF_ANY);
}

/* One datagram a call moved: `uaddr` is the call's sockaddr (0: none), `buf`/`buflen`
 * its first buffer, `total` the datagram's length. */
static __always_inline void dns_datagram(__u32 tgid, __s32 fd, __u8 flow, __u8 call, __u64 uaddr,
					 __u64 buf, __u64 buflen, __u64 total)
{
	struct ev_dgram *ev = dgram_event();
	if (!ev)
		return;
	bool have_peer = dgram_peer_from_user(ev, uaddr);
	struct sock *sk;
	if (flow == FLOW_SEND && have_peer && ev->remote_port == DNS_PORT) {
		/* a send to port 53 makes the socket a DNS socket */
		sk = udp_sock_of_fd(fd);
		if (!sk)
			return;
		remember_dns_sock(tgid, fd, sk);
	} else {
		sk = known_dns_sock(tgid, fd);
		if (!sk)
			return;
	}
	dgram_ends_from_sock(ev, sk, have_peer);
	if (ev->remote_port != DNS_PORT)
		return;
	ev->sk = (__u64)sk;
	ev->fd = fd;
	ev->flow = flow;
	ev->syscall = call;
	dgram_send(ev, tgid, buf, buflen, total);
}

/* sendmsg/recvmsg: the msghdr's name and first iovec. */
static __always_inline void dns_msghdr(__u32 tgid, __s32 fd, __u8 flow, __u8 call, __u64 msg, __u64 total)
{
	struct user_msghdr m = {};
	if (bpf_probe_read_user(&m, sizeof(m), (void *)msg))
		return;
	struct iovec iov = {};
	if (m.msg_iovlen < 1 || bpf_probe_read_user(&iov, sizeof(iov), (void *)m.msg_iov))
		return;
	dns_datagram(tgid, fd, flow, call, m.msg_namelen ? (__u64)m.msg_name : 0, (__u64)iov.iov_base,
		     iov.iov_len, total);
}

struct dns_mmsg {
	__u64 vec;
	__u32 n;
	__u32 tgid;
	__s32 fd;
	__u8 flow;
	__u8 call;
};

static long dns_mmsg_step(__u32 i, struct dns_mmsg *m)
{
	if (i >= m->n)
		return 1;
	__u64 hdr = m->vec + (__u64)i * sizeof(struct mmsghdr);
	__u32 len = 0;
	if (bpf_probe_read_user(&len, sizeof(len), (void *)(hdr + offsetof(struct mmsghdr, msg_len))))
		return 1;
	dns_msghdr(m->tgid, m->fd, m->flow, m->call, hdr + offsetof(struct mmsghdr, msg_hdr), len);
	return 0;
}

static __always_inline int dns_on_exit(long ret, __u8 call)
{
	if (ret <= 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__s32 fd = PT_REGS_PARM1_CORE_SYSCALL(regs);
	__u64 ptr = PT_REGS_PARM2_CORE_SYSCALL(regs);
	__u64 cnt = PT_REGS_PARM3_CORE_SYSCALL(regs);
	switch (call) {
	case DG_SENDTO: {
		/* sendto(fd, buf, len, flags, addr, addrlen); send() is sendto without addr */
		__u64 addr = PT_REGS_PARM5_CORE_SYSCALL(regs);
		if (!addr) {
			struct conn_key k = { .tgid = tgid, .fd = fd };
			if (!bpf_map_lookup_elem(&dns_socks, &k))
				return 0; /* the common case: a TCP send */
		}
		if (!dns_traced(tgid))
			return 0;
		dns_datagram(tgid, fd, FLOW_SEND, call, addr, ptr, cnt, ret);
		return 0;
	}
	case DG_SENDMSG:
	case DG_SENDMMSG:
		break; /* the address, if any, is inside the msghdr: read below */
	default: {
		/* receives and write(): only on sockets already known as DNS sockets */
		struct conn_key k = { .tgid = tgid, .fd = fd };
		if (!bpf_map_lookup_elem(&dns_socks, &k))
			return 0;
	}
	}
	if (!dns_traced(tgid))
		return 0;
	switch (call) {
	case DG_RECVFROM:
		if (PT_REGS_PARM4_CORE_SYSCALL(regs) & MSG_PEEK)
			return 0;
		dns_datagram(tgid, fd, FLOW_RECV, call, PT_REGS_PARM5_CORE_SYSCALL(regs), ptr, cnt, ret);
		break;
	case DG_READ:
		dns_datagram(tgid, fd, FLOW_RECV, call, 0, ptr, cnt, ret);
		break;
	case DG_WRITE:
		dns_datagram(tgid, fd, FLOW_SEND, call, 0, ptr, cnt, ret);
		break;
	case DG_SENDMSG:
		dns_msghdr(tgid, fd, FLOW_SEND, call, ptr, ret);
		break;
	case DG_RECVMSG:
		if (cnt & MSG_PEEK)
			return 0;
		dns_msghdr(tgid, fd, FLOW_RECV, call, ptr, ret);
		break;
	case DG_SENDMMSG:
	case DG_RECVMMSG: {
		if (call == DG_RECVMMSG && (cnt & MSG_PEEK))
			return 0;
		/* ret is a message count; the first DNS_MMSG_MAX are copied, the rest counted */
		struct dns_mmsg m = { .vec = ptr, .n = ret, .tgid = tgid, .fd = fd,
				      .flow = call == DG_SENDMMSG ? FLOW_SEND : FLOW_RECV, .call = call };
		if (ret > DNS_MMSG_MAX) {
			m.n = DNS_MMSG_MAX;
			count(CNT_DNS_MMSG_SKIPPED, ret - DNS_MMSG_MAX);
		}
		bpf_loop(DNS_MMSG_MAX, dns_mmsg_step, &m, 0);
		break;
	}
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int dns_exit_sendto(struct trace_event_raw_sys_exit *ctx) { return dns_on_exit(ctx->ret, DG_SENDTO); }
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int dns_exit_recvfrom(struct trace_event_raw_sys_exit *ctx) { return dns_on_exit(ctx->ret, DG_RECVFROM); }
SEC("tracepoint/syscalls/sys_exit_sendmsg")
int dns_exit_sendmsg(struct trace_event_raw_sys_exit *ctx) { return dns_on_exit(ctx->ret, DG_SENDMSG); }
SEC("tracepoint/syscalls/sys_exit_recvmsg")
int dns_exit_recvmsg(struct trace_event_raw_sys_exit *ctx) { return dns_on_exit(ctx->ret, DG_RECVMSG); }
SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int dns_exit_sendmmsg(struct trace_event_raw_sys_exit *ctx) { return dns_on_exit(ctx->ret, DG_SENDMMSG); }
SEC("tracepoint/syscalls/sys_exit_recvmmsg")
int dns_exit_recvmmsg(struct trace_event_raw_sys_exit *ctx) { return dns_on_exit(ctx->ret, DG_RECVMMSG); }
SEC("tracepoint/syscalls/sys_exit_write")
int dns_exit_write(struct trace_event_raw_sys_exit *ctx) { return dns_on_exit(ctx->ret, DG_WRITE); }
SEC("tracepoint/syscalls/sys_exit_read")
int dns_exit_read(struct trace_event_raw_sys_exit *ctx) { return dns_on_exit(ctx->ret, DG_READ); }

/* connect() of a UDP socket to port 53 (glibc's and Go's resolvers): a DNS socket. */
SEC("tracepoint/syscalls/sys_exit_connect")
int dns_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret != 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__s32 fd = PT_REGS_PARM1_CORE_SYSCALL(regs);
	struct ev_dgram *ev = dgram_event();
	if (!ev || !dgram_peer_from_user(ev, PT_REGS_PARM2_CORE_SYSCALL(regs)) || ev->remote_port != DNS_PORT)
		return 0;
	if (!dns_traced(tgid))
		return 0;
	struct sock *sk = udp_sock_of_fd(fd);
	if (sk)
		remember_dns_sock(tgid, fd, sk);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int dns_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	struct conn_key k = { .tgid = bpf_get_current_pid_tgid() >> 32, .fd = ctx->args[0] };
	bpf_map_delete_elem(&dns_socks, &k);
	return 0;
}
