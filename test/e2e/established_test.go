package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/twill-net/twill/internal/lab/underlay"
)

// streamPort serves a line echo that keeps each connection open.
const streamPort = echoPort + 2

// What a policy change does to a connection already established that the new policy does not
// allow: with --policy-established=keep (the default) it runs on, with reset it is cut while a
// new connection that the policy allows still works. The server's node decides (ingress), so
// its agent runs with the mode under test.
func TestPolicyChangeAndEstablishedConnections(t *testing.T) {
	c := needLab(t)
	for _, tc := range []struct {
		mode      string
		survives  bool
		described string
	}{
		{"keep", true, "an established connection runs on after a policy change"},
		{"reset", false, "an established connection is cut by a policy change that forbids it"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			n1 := c.Node("n1")
			if err := n1.RestartAgent(ctx, "--policy-established="+tc.mode); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := n1.RestartAgent(context.Background()); err != nil {
					t.Errorf("restoring n1's agent: %v", err)
				}
			})
			ns := policyNamespace(t, ctx, c)
			server := addLabelledPod(t, ctx, c, "n1", ns, "server", map[string]string{"app": "server"})
			client := addLabelledPod(t, ctx, c, "n2", ns, "client", map[string]string{"role": "client"})
			serveEcho(t, server.Sandbox, netip.Addr{})
			serveLines(t, server.Sandbox, fmt.Sprintf("0.0.0.0:%d", streamPort))
			waitReach(t, ctx, client, server, true, "no policy: client -> server")

			conn := openStream(t, ctx, client.Sandbox, netip.AddrPortFrom(server.IPv4(), streamPort))
			if err := exchange(conn, "before"); err != nil {
				t.Fatalf("established connection before any policy: %v", err)
			}
			// A new connection being dropped shows the deny is in force on n1.
			createPolicy(t, ctx, c, denyAll(ns, networkingv1.PolicyTypeIngress))
			waitReach(t, ctx, client, server, false, "default deny in force: new connection client -> server")

			err := exchange(conn, "after")
			if tc.survives && err != nil {
				t.Errorf("%s: exchange failed: %v", tc.described, err)
			}
			if !tc.survives && err == nil {
				t.Errorf("%s: the connection still answers", tc.described)
			}
			setLabel(t, ctx, c, ns, "client", "role", "allowed")
			createPolicy(t, ctx, c, allowIngressFrom(ns, "allow-allowed", map[string]string{"app": "server"}, map[string]string{"role": "allowed"}))
			waitReach(t, ctx, client, server, true, "allowed again: new connection client -> server")
		})
	}
}

// serveLines echoes each line back until the client closes.
func serveLines(t *testing.T, ns *underlay.Node, addr string) {
	t.Helper()
	listenAndServe(t, ns, "tcp4", addr, func(conn net.Conn) { _, _ = io.Copy(conn, conn) })
}

func openStream(t *testing.T, ctx context.Context, from *underlay.Node, to netip.AddrPort) net.Conn {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := from.DialContext(dctx, "tcp", to.String())
	if err != nil {
		t.Fatalf("opening a connection to %s: %v", to, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// exchange sends one line and waits up to two seconds (TCP retransmits included) for it back.
func exchange(conn net.Conn, line string) error {
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, line+"\n"); err != nil {
		return err
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("got %s back, want %s", strconv.Quote(got), strconv.Quote(line))
	}
	return nil
}
