package nftsvc

// Benchmarks of programming cost, end to end over netlink into a kernel table in a twt-
// namespace: adding one service to a table already serving 10,000 / 50,000, and a Full apply
// of 10,000. Run with: go test -run '^$' -bench . -benchtime 50x ./internal/datapath/nftsvc
// (root). Each add reports its p50 and p99 in milliseconds besides the mean.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/testutil"
)

// benchNode makes a namespace for the table and a reconciler writing into it. The reconciler
// keeps the namespace, so it is called from any thread, as in the agent (a goroutine locked
// to a thread, as ns.Do makes, would add thread handoffs to every netlink round trip).
func benchNode(b *testing.B) *Reconciler {
	testutil.RequireRoot(b)
	s := make([]byte, 3)
	_, _ = rand.Read(s)
	n := testutil.NewNetNS(b, "svcbench", hex.EncodeToString(s))
	var r *Reconciler
	if err := n.NS.Do(func(ns.NetNS) error {
		var err error
		r, err = NewKernel(nil)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	return r
}

func BenchmarkAddOneService(b *testing.B) {
	for _, existing := range []int{10000, 50000} {
		b.Run(fmt.Sprintf("existing=%d", existing), func(b *testing.B) {
			r := benchNode(b)
			start := time.Now()
			must(b, r.ApplyServices(context.Background(), datapath.ServiceChanges{Full: true, Set: manyServices(0, existing)}))
			full := time.Since(start)
			var took, cpu []time.Duration
			next := existing
			for b.Loop() {
				svc := manyServices(next, 1)
				next++
				t0, c0 := time.Now(), selfCPU()
				must(b, r.ApplyServices(context.Background(), datapath.ServiceChanges{Set: svc}))
				took, cpu = append(took, time.Since(t0)), append(cpu, selfCPU()-c0)
			}
			reportPercentiles(b, took, cpu)
			b.ReportMetric(float64(full.Milliseconds()), "setup-full-ms")
			if st := r.Stats(); st.Rebuilds != 1 || st.Failures != 0 {
				b.Fatalf("stats %+v: every add must be an update", st)
			}
		})
	}
}

func BenchmarkFullResync(b *testing.B) {
	r := benchNode(b)
	services := manyServices(0, 10000)
	var took, cpu []time.Duration
	for b.Loop() {
		t0, c0 := time.Now(), selfCPU()
		must(b, r.ApplyServices(context.Background(), datapath.ServiceChanges{Full: true, Set: services}))
		took, cpu = append(took, time.Since(t0)), append(cpu, selfCPU()-c0)
	}
	reportPercentiles(b, took, cpu)
}

// reportPercentiles reports wall-clock p50 and p99, and the median CPU time (user + system,
// which includes the kernel's work on the batch) of the process, which a busy machine
// inflates less than the wall clock.
func reportPercentiles(b *testing.B, took, cpu []time.Duration) {
	if len(took) == 0 {
		return
	}
	at := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
	}
	b.ReportMetric(at(took, 0.50), "p50-ms")
	b.ReportMetric(at(took, 0.99), "p99-ms")
	b.ReportMetric(at(cpu, 0.50), "cpu-p50-ms")
}

// selfCPU is the CPU time of the process so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
