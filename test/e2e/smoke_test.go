package e2e

import (
	"context"
	"testing"
	"time"
)

func TestSmokePodAcrossNodes(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := c.AddPod(ctx, c.Node("n1"), "smoke-a")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(ctx, a)
	b, err := c.AddPod(ctx, c.Node("n3"), "smoke-b")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(ctx, b)
	t.Logf("a=%v b=%v", a.IPs, b.IPs)
	out, err := a.Exec(ctx, "ping", "-c", "2", "-W", "2", b.IPv4().String()).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatal(err)
	}
}
