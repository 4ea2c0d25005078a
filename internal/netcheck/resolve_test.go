package netcheck

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// startDNS runs a DNS server on a free UDP port of loopback that knows one name (known.test,
// two IPv4 addresses) and answers NXDOMAIN for every other.
func startDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dnsmessage.Message
			if q.Unpack(buf[:n]) != nil || len(q.Questions) != 1 {
				continue
			}
			question := q.Questions[0]
			reply := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: q.ID, Response: true, Authoritative: true, RCode: dnsmessage.RCodeNameError},
				Questions: q.Questions,
			}
			if question.Name.String() == "known.test." {
				reply.RCode = dnsmessage.RCodeSuccess
				if question.Type == dnsmessage.TypeA {
					for _, ip := range [][4]byte{{192, 0, 2, 9}, {192, 0, 2, 7}} {
						reply.Answers = append(reply.Answers, dnsmessage.Resource{
							Header: dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5},
							Body:   &dnsmessage.AResource{A: ip},
						})
					}
				}
			}
			out, err := reply.Pack()
			if err == nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

func TestResolveReturnsTheAddressesSorted(t *testing.T) {
	server := startDNS(t)
	got, err := Resolve(t.Context(), "known.test.", ResolveOptions{Timeout: 2 * time.Second, Server: server})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("192.0.2.9")}
	if !slices.Equal(got, want) {
		t.Errorf("Resolve(known.test) = %v, want %v", got, want)
	}
}

func TestUnknownNameIsNotFoundNotTimeout(t *testing.T) {
	server := startDNS(t)
	_, err := Resolve(t.Context(), "missing.test.", ResolveOptions{Timeout: 2 * time.Second, Server: server})
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrTimeout) {
		t.Errorf("Resolve(missing.test): %v, want not found", err)
	}
}

func TestSilentServerIsATimeout(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	start := time.Now()
	_, err = Resolve(t.Context(), "known.test.", ResolveOptions{Timeout: 500 * time.Millisecond, Server: pc.LocalAddr().String()})
	if !errors.Is(err, ErrTimeout) || errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve against a silent server: %v, want a timeout", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("a 500ms timeout took %s", took)
	}
}
