// A Go net/http client (stdlib only) for the TLS capture tests: POSTs a body with a token
// header to 127.0.0.1 using a chosen SNI, saves the response body, prints JSON.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	url := flag.String("url", "", "https URL (host is the SNI)")
	addr := flag.String("addr", "", "127.0.0.1:port to dial")
	bodyFile := flag.String("body", "", "request body file")
	out := flag.String("out", "", "response body file")
	token := flag.String("token", "", "x-token header")
	delay := flag.Duration("delay", 0, "wait before the request")
	waitFile := flag.String("wait-file", "", "wait (up to 60 s) until this file exists before the request")
	flag.Parse()
	time.Sleep(*delay)
	for deadline := time.Now().Add(60 * time.Second); *waitFile != "" && time.Now().Before(deadline); {
		if _, err := os.Stat(*waitFile); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	body, err := os.ReadFile(*bodyFile)
	if err != nil {
		panic(err)
	}
	dialer := &net.Dialer{}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp4", *addr)
		},
		ForceAttemptHTTP2: false,
	}
	req, _ := http.NewRequest("POST", *url, bytes.NewReader(body))
	req.Header.Set("X-Token", *token)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	os.WriteFile(*out, data, 0o644)
	tr.CloseIdleConnections()
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"pid": os.Getpid(), "status": resp.StatusCode, "proto": resp.Proto})
}
