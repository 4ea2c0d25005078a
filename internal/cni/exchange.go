package cni

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/textproto"
	"strconv"
	"strings"
)

// The plugin speaks the agent's HTTP (cniproto) without net/http on purpose: the runtime execs
// the plugin for every ADD and DEL, and merely linking net/http (its TLS, HTTP/2 and proxy
// support, none of which a unix socket needs) made each exec of twill-cni cost about 4 ms more
// CPU (19.6 ms against 15.5 ms, median of 150 interleaved runs on a 2-core VM), a fifth of the
// plugin's whole run; with 50 pods started at once, that CPU is what every pod waits for. One request per connection is all the plugin ever
// sends, so it sends an HTTP/1.0 request: the agent's net/http server then answers without
// chunked encoding and closes the connection after the reply, so the reply is simply
// everything read until EOF.

// reply is the agent's answer.
type reply struct {
	code   int
	status string // "404 Not Found"
	body   []byte
}

// exchange sends one POST of payload to path on the connection rw and reads the reply.
func exchange(rw io.ReadWriter, path string, payload []byte) (reply, error) {
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST %s HTTP/1.0\r\nHost: twill-agent\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, len(payload))
	req.Write(payload)
	if _, err := rw.Write(req.Bytes()); err != nil {
		return reply{}, fmt.Errorf("send request: %w", err)
	}
	return readReply(bufio.NewReader(rw))
}

// readReply parses an HTTP/1.x reply whose body ends at Content-Length, or at EOF without one.
func readReply(r *bufio.Reader) (reply, error) {
	tp := textproto.NewReader(r)
	line, err := tp.ReadLine()
	if err != nil {
		return reply{}, fmt.Errorf("read reply: %w", err)
	}
	proto, status, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") || len(status) < 3 {
		return reply{}, fmt.Errorf("malformed reply status line %q", line)
	}
	code, err := strconv.Atoi(status[:3])
	if err != nil {
		return reply{}, fmt.Errorf("malformed reply status line %q", line)
	}
	header, err := tp.ReadMIMEHeader()
	if err != nil {
		return reply{}, fmt.Errorf("read reply header: %w", err)
	}
	if te := header.Get("Transfer-Encoding"); te != "" {
		return reply{}, fmt.Errorf("unexpected Transfer-Encoding %q in a reply to HTTP/1.0", te)
	}
	var body []byte
	if cl := header.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 {
			return reply{}, fmt.Errorf("malformed Content-Length %q", cl)
		}
		body = make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return reply{}, fmt.Errorf("read reply body: %w", err)
		}
	} else if body, err = io.ReadAll(r); err != nil {
		return reply{}, fmt.Errorf("read reply body: %w", err)
	}
	return reply{code: code, status: status, body: body}, nil
}
