// goresolve: resolve a name with Go's own resolver (PreferGo) through a given DNS server.
//
//	goresolve SERVER NAME
//
// Go's resolver connects a UDP socket per query (A and AAAA in parallel) and uses
// write(2)/read(2) on it: the path glibc does not take. Prints one JSON line
// {"pid": N, "addrs": [...]}.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	server, name := os.Args[1], os.Args[2]
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", net.JoinHostPort(server, "53"))
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, _ := json.Marshal(map[string]interface{}{"pid": os.Getpid(), "addrs": addrs})
	fmt.Println(string(out))
}
