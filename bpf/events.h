/* The one wire contract between the kernel programs and user space.
 *
 * Every struct that crosses the ring buffer is defined here, `type` first, with
 * explicit padding so that C and Python agree byte for byte. The Python mirror lives in
 * src/plaintap/bpf/abi.py and checks every size and offset at start-up against the
 * values this header exports through the `abi_layout` section of the object.
 * Change a struct here and there, together.
 */
#ifndef PLAINTAP_EVENTS_H
#define PLAINTAP_EVENTS_H

#define EV_CONN_OPEN   1
#define EV_CONN_CLOSE  2
#define EV_DATA        3
#define EV_GAP         4
#define EV_PROC_EXEC   5
#define EV_PROC_EXIT   6
#define EV_SOCK_STATE  7
#define EV_DGRAM       8 /* a UDP datagram to or from port 53 (DNS), with its peer */

/* connection roles */
#define ROLE_CLIENT 1 /* connect() */
#define ROLE_SERVER 2 /* accept()  */

/* direction classes (qtap's): bit flags so that a filter is a mask */
#define DIR_INGRESS          1
#define DIR_EGRESS_INTERNAL  2
#define DIR_EGRESS_EXTERNAL  4

/* data directions, from the local process's point of view */
#define FLOW_SEND 0
#define FLOW_RECV 1

/* data sources */
#define SRC_SOCKET 0 /* bytes on the socket (syscalls) */
#define SRC_TLS    1 /* plaintext from inside a TLS library */

/* Two ring buffers (maps): `events` carries EV_DATA and EV_GAP; `control` carries every
 * other event (connection open/close, socket state, exec, exit), so a flood of data can
 * never crowd out the events that say which connections and processes exist. User space
 * drains both and merges them by ts_ns (see src/plaintap/bpf/loader.py). */

/* gap reasons: why bytes of a stream are missing (each names its cause) */
#define GAP_RINGBUF_FULL   1
#define GAP_CHUNK_BUDGET   2
#define GAP_SENDFILE       3
#define GAP_READ_FAULT     4
#define GAP_PROC_BUDGET    5 /* the process exceeded its byte budget (token bucket): shed */
#define GAP_SENDMMSG       6 /* bytes moved by sendmmsg(2): counted, not copied */
#define GAP_RECVMMSG       7 /* recvmmsg(2) */
#define GAP_SPLICE         8 /* splice(2): bytes go through a pipe, not user memory */
#define GAP_IO_URING       9 /* an io_uring request on the socket */

/* Bytes of payload carried by one EV_DATA event at most. A larger read or write is sent
 * as several events with their offsets; nothing is cut at this size. */
#define DATA_CHUNK 16384

/* Indexes into the `counters` per-CPU array. Mirrored by name in abi.py. */
#define CNT_RINGBUF_DROPS        0 /* events that could not be reserved */
#define CNT_RINGBUF_DROP_BYTES   1 /* payload bytes inside those events */
#define CNT_CHUNK_BUDGET_GAPS    2 /* syscalls whose data exceeded the chunk budget */
#define CNT_CONN_TABLE_FULL      3 /* connections not tracked: table full */
#define CNT_READ_FAULTS          4 /* user memory that could not be read */
#define CNT_CONNS_FILTERED       5 /* connections skipped by loopback/direction filters */
#define CNT_TLS_NO_FD            6 /* TLS library calls whose socket could not be found */
#define CNT_TLS_UNTRACKED        7 /* TLS library calls on sockets not tracked (filtered) */
#define CNT_PROCS_FILTERED       8 /* connections skipped because tap.filters skip their process */
#define CNT_CONTROL_DROPS        9 /* control events (open/close/state/exec/exit) lost: `control` ring full */
#define CNT_BUDGET_SHED_CALLS   10 /* calls whose bytes were shed: process over its byte budget */
#define CNT_BUDGET_SHED_BYTES   11
#define CNT_SENDMMSG_GAPS       12 /* calls counted as gaps, by syscall */
#define CNT_RECVMMSG_GAPS       13
#define CNT_SPLICE_GAPS         14
#define CNT_SENDFILE_GAPS       15
#define CNT_IO_URING_GAPS       16 /* io_uring completions on tracked sockets (bytes shown as gaps) */
#define CNT_IO_URING_FIXED      17 /* io_uring data requests on registered (fixed) files: not attributable */
#define CNT_AGENT_PEER_CONNS    18 /* accepted connections whose peer is the agent itself: not tracked */
#define CNT_SSL_FD_STALE        19 /* SSL* -> socket entries found stale (socket closed or reused) */
#define CNT_CONNS_TRACKED       20 /* entries added to `conns` (minus untracked ones: the table's fill) */
#define CNT_CONNS_UNTRACKED     21 /* entries removed from `conns` (every way below, and close(2)) */
/* Connection life cycle: how entries left `conns` other than by close(2) (see CLOSE_*). */
#define CNT_UNTRACKED_DUP       22 /* dup/dup2/dup3 put another file on a tracked fd */
#define CNT_UNTRACKED_CLOSE_RANGE 23 /* close_range(2) closed a tracked fd */
#define CNT_UNTRACKED_EXEC      24 /* a close-on-exec tracked fd, closed by execve */
#define CNT_UNTRACKED_EXIT      25 /* the process exited with the fd open */
#define CNT_UNTRACKED_STALE     26 /* a data call found the fd naming another socket than the tracked one */
#define CNT_DUP_FOLLOWED        27 /* dup of a tracked socket: the new fd carries the same connection */
#define CNT_DUP_UNFOLLOWED      28 /* ... but the dup table was full: the new fd is not tracked */
#define CNT_SOCKS_TABLE_FULL    29 /* tracked sockets whose TCP state changes cannot be followed (table full) */
#define CNT_PROC_TABLE_FULL     30 /* processes whose tracked fds cannot be revalidated at close_range/exec/exit */
#define CNT_DNS_DGRAMS          31 /* DNS datagrams put on the control ring */
#define CNT_DNS_CUT             32 /* ... of which cut (past DGRAM_MAX, or past the first iovec) */
#define CNT_DNS_MMSG_SKIPPED    33 /* sendmmsg/recvmmsg messages past DNS_MMSG_MAX: not copied */
#define CNT_DNS_SOCK_STALE      34 /* dns_socks entries whose fd now names another socket */
#define CNT_DNS_SHED            35 /* DNS datagrams shed: the process was over its byte budget */
#define CNT_GAP_UNREPORTED_BYTES 36 /* bytes of gaps (chunk budget, read fault, mmsg…) whose
                                     * gap event was lost too (ring full): user space finds them
                                     * as holes and counts them with the ring-buffer losses */
#define CNT__MAX                37

/* Per-process filters from tap.filters (map `proc_filters`: tgid -> __u32 of these bits),
 * written by user space when it learns a process's executable (start-up scan, exec). */
#define PF_SKIP_ALL  1 /* not traced at all */
#define PF_SKIP_DATA 2 /* connections and byte counts only: no payload, socket or TLS */
#define PF_SKIP_TLS  4 /* no TLS plaintext hooks: ciphertext, TLS facts */
#define PF_SKIP_DNS  8 /* no DNS datagrams (tap.filters `only: [dns]`) */

struct ev_header {
	__u32 type;
	__u32 pid;      /* tgid */
	__u64 ts_ns;    /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};                      /* 16 */

struct ev_conn_open {
	struct ev_header h;     /* 0 */
	__u64 conn_id;          /* 16: unique per agent run, never reused */
	__u32 tid;              /* 24 */
	__s32 fd;               /* 28 */
	__u32 uid;              /* 32 */
	__u16 family;           /* 36: AF_INET | AF_INET6 */
	__u8  role;             /* 38: ROLE_* */
	__u8  direction;        /* 39: DIR_* */
	__u16 local_port;       /* 40: host order */
	__u16 remote_port;      /* 42: host order */
	__u32 _pad0;            /* 44 */
	__u8  local_addr[16];   /* 48: v4 in the first 4 bytes */
	__u8  remote_addr[16];  /* 64 */
	char  comm[16];         /* 80 */
};                              /* 96 */

/* Why an entry left the kernel's connection table (ev_conn_close.reason). */
#define CLOSE_SYSCALL 1 /* close(2) */
#define CLOSE_UNTRACK 2 /* (unused: kept so the numbers below stay put) */
#define CLOSE_DUP     3 /* dup2/dup3 (or dup) put another file on the fd */
#define CLOSE_RANGE   4 /* close_range(2) */
#define CLOSE_EXEC    5 /* close-on-exec at execve */
#define CLOSE_EXIT    6 /* the process exited */
#define CLOSE_STALE   7 /* found naming another socket on use (a close the kernel side did not see) */

struct ev_conn_close {
	struct ev_header h;     /* 0 */
	__u64 conn_id;          /* 16 */
	__u64 bytes_sent;       /* 24: all bytes written to the socket */
	__u64 bytes_recv;       /* 32 */
	__s32 fd;               /* 40 */
	__u32 reason;           /* 44: CLOSE_* */
	__u64 tls_sent;         /* 48: plaintext bytes given to the TLS library (the TLS stream's end) */
	__u64 tls_recv;         /* 56: so user space sees a loss at a stream's very end too */
	__u64 lost;             /* 64: payload bytes of this connection that reached user space
	                         * in no data event (struct conn.lost): user space counts what no
	                         * gap event or hole placed on a stream as `unplaced` gap bytes */
};                              /* 72 */

struct ev_data {
	struct ev_header h;     /* 0 */
	__u64 conn_id;          /* 16 */
	__u64 offset;           /* 24: stream offset of data[0] in this flow+source */
	__u32 len;              /* 32: bytes in data[] */
	__u8  flow;             /* 36: FLOW_* */
	__u8  source;           /* 37: SRC_* */
	__u16 _pad0;            /* 38 */
	__s32 fd;               /* 40 */
	__u32 _pad1;            /* 44 */
	__u8  data[DATA_CHUNK]; /* 48 */
};

struct ev_gap {
	struct ev_header h;     /* 0 */
	__u64 conn_id;          /* 16 */
	__u64 offset;           /* 24: first missing byte */
	__u64 len;              /* 32: missing bytes */
	__u8  flow;             /* 40 */
	__u8  source;           /* 41 */
	__u16 reason;           /* 42: GAP_* */
	__u32 _pad0;            /* 44 */
};                              /* 48 */

#define EXEC_FILENAME_MAX 256
#define EXEC_ARGS_MAX 512

struct ev_proc_exec {
	struct ev_header h;     /* 0 */
	__u32 ppid;             /* 16 */
	__u32 uid;              /* 20 */
	__u16 filename_len;     /* 24 */
	__u16 args_len;         /* 26: NUL-separated argv, possibly cut */
	__u32 _pad0;            /* 28 */
	char  filename[EXEC_FILENAME_MAX]; /* 32 */
	char  args[EXEC_ARGS_MAX];         /* 288 */
};                                         /* 800 */

struct ev_proc_exit {
	struct ev_header h;     /* 0 */
	__s32 exit_code;        /* 16 */
	__u32 _pad0;            /* 20 */
};                              /* 24 */

struct ev_sock_state {
	struct ev_header h;     /* 0 */
	__u64 conn_id;          /* 16 */
	__s32 oldstate;         /* 24 */
	__s32 newstate;         /* 28 */
};                              /* 32 */

/* DNS: a UDP datagram sent to or received from port 53, copied whole up to DGRAM_MAX
 * (EDNS0's common ceiling), with both ends. `sk` (the struct sock *) names the socket, so
 * user space pairs a query and its answer by (pid, sk, DNS id) whether or not the socket
 * is connected. Goes on the control ring: low volume, and in time order with the
 * connections that follow a lookup. */
#define DGRAM_MAX 4096
#define DNS_MMSG_MAX 4 /* sendmmsg/recvmmsg: messages copied per call; the rest counted */

#define DG_SENDTO   1 /* the syscall that moved the datagram */
#define DG_RECVFROM 2
#define DG_SENDMSG  3
#define DG_RECVMSG  4
#define DG_SENDMMSG 5
#define DG_RECVMMSG 6
#define DG_WRITE    7
#define DG_READ     8

struct ev_dgram {
	struct ev_header h;     /* 0 */
	__u64 sk;               /* 16: struct sock * (identity of the socket) */
	__u32 tid;              /* 24 */
	__s32 fd;               /* 28 */
	__u32 uid;              /* 32 */
	__u16 family;           /* 36: AF_INET | AF_INET6 (of the addresses below) */
	__u8  flow;             /* 38: FLOW_* */
	__u8  syscall;          /* 39: DG_* */
	__u16 local_port;       /* 40: host order */
	__u16 remote_port;      /* 42: host order */
	__u32 len;              /* 44: bytes in data[] */
	__u32 orig_len;         /* 48: the datagram's length (len < orig_len: cut) */
	__u32 _pad0;            /* 52 */
	__u8  local_addr[16];   /* 56: v4 in the first 4 bytes */
	__u8  remote_addr[16];  /* 72 */
	char  comm[16];         /* 88 */
	__u8  data[DGRAM_MAX];  /* 104 */
};

/* Settings: one entry of the `settings` array map, written by user space after load
 * and before attach. */
struct settings {
	__u32 agent_pid;        /* 0: the agent's tgid as the kernel sees it (init pid ns): never traced */
	__u8  ignore_loopback;  /* 4 */
	__u8  direction_mask;   /* 5: DIR_* bits that are tracked */
	__u8  capture_data;     /* 6: stream payload bytes (else count only) */
	__u8  _pad0;            /* 7 */
	__u32 max_chunks;       /* 8: per syscall; past it, a gap event */
	__u32 budget_rate;      /* 12: payload bytes/s per process (token bucket); 0: unlimited */
	__u64 budget_burst;     /* 16: bucket size in bytes */
	__u64 agent_pidns_dev;  /* 24: the agent's pid namespace (stat of /proc/self/ns/pid) ... */
	__u64 agent_pidns_ino;  /* 32 */
	__u32 agent_nspid;      /* 40: ... and its pid there: how learn_self finds agent_pid */
	__u32 _pad1;            /* 44 */
};                              /* 48 */

/* The kernel's connection table (map `conns`): key and value. User space writes entries
 * too, for connections that were open before the agent started. */
struct conn_key {
	__u32 tgid;             /* 0 */
	__s32 fd;               /* 4 */
};                              /* 8 */

#define CONN_TLS_INSPECTED 1 /* plaintext comes from a TLS hook: stop streaming ciphertext */
#define CONN_NO_DATA       2 /* count bytes only (the process's filter says PF_SKIP_DATA) */
#define CONN_DUP           4 /* the socket is on more than one fd of the process (dup): see dup_refs */

struct conn {
	__u64 id;               /* 0 */
	__u64 sent;             /* 8: bytes written on the socket */
	__u64 recv;             /* 16 */
	__u64 tls_sent;         /* 24: plaintext bytes given to the TLS library */
	__u64 tls_recv;         /* 32 */
	__u64 sk;               /* 40: struct sock *, to untrack on state change (0: unknown) */
	__u8  role;             /* 48: ROLE_* */
	__u8  direction;        /* 49: DIR_* */
	__u8  flags;            /* 50: CONN_* */
	__u8  _pad0;            /* 51 */
	__u32 ino;              /* 52: the socket's inode number: a data call on the fd is
	                         * attributed to this connection only while the fd still names
	                         * this socket (0: not known yet, learned at first use) */
	__u64 lost;             /* 56: payload bytes the kernel dropped (ring full, process budget) or
	                         * whose gap event it could not report: the books user space keeps
	                         * per connection (see ev_conn_close.lost) */
};                              /* 64 */

/* Connection ids the kernel hands out count up from 1; user space adopts connections
 * that predate the agent with ids from here up, so the two never meet. */
#define ADOPTED_CONN_ID_BASE (1ULL << 62)

/* Per Go binary: how to get from a *crypto/tls.Conn to its socket fd (an entry of the
 * `go_offsets` array map; the uprobe's bpf cookie is the index). */
struct go_offsets {
	__u32 conn_iface_data;  /* 0: tls.Conn.conn interface's data word */
	__u32 tcpconn_fd;       /* 4: net.TCPConn (net.conn).fd *netFD */
	__u32 netfd_sysfd;      /* 8: netFD.pfd.Sysfd */
	__u32 _pad0;            /* 12 */
};                              /* 16 */

#endif
