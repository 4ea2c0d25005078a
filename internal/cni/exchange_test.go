package cni

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// serveAgent runs handler as the agent's net/http server on a unix socket and returns a client
// for it.
func serveAgent(t *testing.T, handler http.HandlerFunc) *agentClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return &agentClient{socket: sock, connectFor: time.Second}
}

// TestCallThroughNetHTTPServer checks the plugin's HTTP/1.0 exchange against the server the
// agent really runs: the request arrives whole, and replies of every size (net/http switches
// from Content-Length to close-delimited bodies past its buffer) and error codes come back.
func TestCallThroughNetHTTPServer(t *testing.T) {
	big := strings.Repeat("x", 100_000)
	client := serveAgent(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/echo":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		case "/big":
			_, _ = io.WriteString(w, `{"msg":"`+big+`"}`)
		case "/fail":
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"code":11,"msg":"try later"}`)
		case "/garbage":
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, "not json")
		}
	})
	ctx := context.Background()

	var echoed map[string]string
	if err := client.call(ctx, "/echo", map[string]string{"containerID": "abc"}, &echoed); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if echoed["containerID"] != "abc" {
		t.Errorf("echo returned %v", echoed)
	}

	var large struct{ Msg string }
	if err := client.call(ctx, "/big", struct{}{}, &large); err != nil {
		t.Fatalf("big reply: %v", err)
	}
	if large.Msg != big {
		t.Errorf("big reply came back with %d bytes, want %d", len(large.Msg), len(big))
	}

	err := client.call(ctx, "/fail", struct{}{}, nil)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || cniErr.Msg != "try later" {
		t.Errorf("error reply gave %v, want the agent's CNI error 11", err)
	}

	err = client.call(ctx, "/garbage", struct{}{}, nil)
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInternal || !strings.Contains(cniErr.Msg, "500") {
		t.Errorf("non-CNI error reply gave %v, want code 999 naming the status", err)
	}
}

// TestCallDroppedConnectionIsUnreachable: an agent that dies mid-request must read as
// unreachable (so DEL spools), not as an answer.
func TestCallDroppedConnectionIsUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = bufio.NewReader(c).ReadString('\n')
			c.Close()
		}
	}()
	client := &agentClient{socket: sock, connectFor: time.Second}
	err = client.call(context.Background(), "/v1/del", struct{}{}, nil)
	var unreachable *unreachableError
	if !errors.As(err, &unreachable) {
		t.Fatalf("dropped connection gave %v, want an unreachable error", err)
	}
}

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		code     int
		body     string
		wantErr  string
	}{
		{name: "content length", in: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing", code: 200, body: "{}"},
		{name: "until EOF", in: "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n{\"code\":11}", code: 503, body: `{"code":11}`},
		{name: "short body", in: "HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n{}", wantErr: "read reply body"},
		{name: "chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", wantErr: "Transfer-Encoding"},
		{name: "not http", in: "SSH-2.0-OpenSSH\r\n\r\n", wantErr: "malformed reply status line"},
		{name: "empty", in: "", wantErr: "read reply"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := readReply(bufio.NewReader(strings.NewReader(tc.in)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %+v, %v; want an error with %q", r, err, tc.wantErr)
				}
				return
			}
			if err != nil || r.code != tc.code || string(r.body) != tc.body {
				t.Fatalf("got code %d body %q err %v; want %d %q", r.code, r.body, err, tc.code, tc.body)
			}
		})
	}
}
