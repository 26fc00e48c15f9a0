/* Prints the layout of every struct in events.h as JSON, so the Python mirror
 * (src/plaintap/bpf/abi.py) can check itself against the compiler's view at start-up. */
#include <stddef.h>
#include <stdio.h>
#include <linux/types.h>
#include "events.h"

#define S(T) printf("%s\"%s\": {\"size\": %zu", first ? "" : ", ", #T, sizeof(struct T)); first = 0;
#define F(T, f) printf(", \"%s\": %zu", #f, offsetof(struct T, f));
#define E() printf("}");

int main(void)
{
	int first = 1;
	printf("{");
	S(ev_header) F(ev_header, type) F(ev_header, pid) F(ev_header, ts_ns) E()
	S(ev_conn_open) F(ev_conn_open, conn_id) F(ev_conn_open, tid) F(ev_conn_open, fd) F(ev_conn_open, uid)
		F(ev_conn_open, family) F(ev_conn_open, role) F(ev_conn_open, direction) F(ev_conn_open, local_port)
		F(ev_conn_open, remote_port) F(ev_conn_open, local_addr) F(ev_conn_open, remote_addr) F(ev_conn_open, comm) E()
	S(ev_conn_close) F(ev_conn_close, conn_id) F(ev_conn_close, bytes_sent) F(ev_conn_close, bytes_recv)
		F(ev_conn_close, fd) F(ev_conn_close, reason) F(ev_conn_close, tls_sent)
		F(ev_conn_close, tls_recv) F(ev_conn_close, lost) E()
	S(ev_data) F(ev_data, conn_id) F(ev_data, offset) F(ev_data, len) F(ev_data, flow) F(ev_data, source)
		F(ev_data, fd) F(ev_data, data) E()
	S(ev_gap) F(ev_gap, conn_id) F(ev_gap, offset) F(ev_gap, len) F(ev_gap, flow) F(ev_gap, source) F(ev_gap, reason) E()
	S(ev_proc_exec) F(ev_proc_exec, ppid) F(ev_proc_exec, uid) F(ev_proc_exec, filename_len) F(ev_proc_exec, args_len)
		F(ev_proc_exec, filename) F(ev_proc_exec, args) E()
	S(ev_proc_exit) F(ev_proc_exit, exit_code) E()
	S(ev_sock_state) F(ev_sock_state, conn_id) F(ev_sock_state, oldstate) F(ev_sock_state, newstate) E()
	S(ev_dgram) F(ev_dgram, sk) F(ev_dgram, tid) F(ev_dgram, fd) F(ev_dgram, uid) F(ev_dgram, family)
		F(ev_dgram, flow) F(ev_dgram, syscall) F(ev_dgram, local_port) F(ev_dgram, remote_port) F(ev_dgram, len)
		F(ev_dgram, orig_len) F(ev_dgram, local_addr) F(ev_dgram, remote_addr) F(ev_dgram, comm) F(ev_dgram, data) E()
	S(settings) F(settings, agent_pid) F(settings, ignore_loopback) F(settings, direction_mask)
		F(settings, capture_data) F(settings, max_chunks) F(settings, budget_rate) F(settings, budget_burst)
		F(settings, agent_pidns_dev) F(settings, agent_pidns_ino) F(settings, agent_nspid) E()
	S(conn_key) F(conn_key, tgid) F(conn_key, fd) E()
	S(conn) F(conn, id) F(conn, sent) F(conn, recv) F(conn, tls_sent) F(conn, tls_recv) F(conn, sk)
		F(conn, role) F(conn, direction) F(conn, flags) F(conn, ino) F(conn, lost) E()
	printf(", \"DATA_CHUNK\": %d, \"CNT__MAX\": %d, \"PF_SKIP_ALL\": %d, \"PF_SKIP_DATA\": %d, \"PF_SKIP_TLS\": %d, \"PF_SKIP_DNS\": %d, \"DGRAM_MAX\": %d}\n",
	       DATA_CHUNK, CNT__MAX, PF_SKIP_ALL, PF_SKIP_DATA, PF_SKIP_TLS, PF_SKIP_DNS, DGRAM_MAX);
	return 0;
}
