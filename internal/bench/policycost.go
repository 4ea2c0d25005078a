package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath/nftdp"
)

// policyConditions say what the policy figures were measured on.
type policyConditions struct {
	size       PolicyScale
	localPods  int
	identities int
	cores      int
}

func (c policyConditions) String() string {
	return fmt.Sprintf("%d NetworkPolicies in %d namespaces, %d pod addresses (IPv4) on %d nodes, %d on this node, %d identities, nft %s, %d cores, %s",
		c.size.Namespaces*c.size.PoliciesPerNS, c.size.Namespaces, c.size.Pods, c.size.Nodes, c.localPods, c.identities,
		nftVersion(), c.cores, machineLoad())
}

// policyMeasurements turns the samples into p50 and p99 per kind of change.
func policyMeasurements(samples map[string][]time.Duration, c policyConditions) []Measurement {
	var out []Measurement
	for _, kind := range changeKinds {
		s := samples[kind]
		if len(s) == 0 {
			continue
		}
		cond := fmt.Sprintf("%s; change entering the calculator to nftables transaction done (State, render, diff, netlink transaction); %d samples; %s",
			changeWhat[kind], len(s), c)
		for _, p := range []float64{50, 99} {
			out = append(out, Measurement{Metric: fmt.Sprintf("policy_%s_to_enforced_p%.0f", kind, p),
				Value: Millis(Percentile(s, p)), Unit: "ms", Conditions: cond})
		}
	}
	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	if len(all) > 0 {
		cond := fmt.Sprintf("every kind of change together; %d samples; target p99 <= 100 ms; %s", len(all), c)
		for _, p := range []float64{50, 99} {
			out = append(out, Measurement{Metric: fmt.Sprintf("policy_change_to_enforced_p%.0f", p),
				Value: Millis(Percentile(all, p)), Unit: "ms", Conditions: cond})
		}
	}
	return out
}

// cpuMeasurements report the CPU time of a change, over every kind: in twill's own code (the
// calculator, rendering and diffing, the netlink transaction) and in child processes (nft).
func cpuMeasurements(goCPU, nftCPU []time.Duration, c policyConditions) []Measurement {
	var out []Measurement
	for _, x := range []struct {
		name, what string
		s          []time.Duration
	}{
		{"go", "CPU time (user+system) of this process per change: calculator, State, render, diff, netlink transaction (includes GC)", goCPU},
		{"nft", "CPU time (user+system) of child processes per change (nft; none, the datapath writes over netlink)", nftCPU},
	} {
		for _, p := range []float64{50, 99} {
			out = append(out, Measurement{Metric: fmt.Sprintf("policy_change_cpu_%s_p%.0f", x.name, p), Value: Millis(Percentile(x.s, p)),
				Unit: "ms", Conditions: fmt.Sprintf("%s; %d changes of every kind; %s", x.what, len(x.s), c)})
		}
	}
	return out
}

// ruleSetCost is what the table costs once the changes are done.
type ruleSetCost struct {
	listingBytes                        int
	elements, rules, chains, setsOrMaps int
	counters                            int
	kernelBytes                         []int64 // slab + vmalloc growth of each rebuild
	execFloorBig, execFloorTiny         time.Duration
	execCPUBig, execCPUTiny             time.Duration // nft's CPU time per transaction
}

// ruleSetCost lists the table, rebuilds it a few times measuring the kernel's memory, and
// times the cheapest transaction nft can run against it and against a tiny table.
func (b *policyBench) ruleSetCost() (ruleSetCost, error) {
	var c ruleSetCost
	text, err := b.ns.nft("list", "table", string(nftdp.TableFamily), nftdp.TableName)
	if err != nil {
		return c, err
	}
	c.listingBytes = len(text)
	js, err := b.ns.nft("-j", "list", "table", string(nftdp.TableFamily), nftdp.TableName)
	if err != nil {
		return c, err
	}
	if err := c.count(js); err != nil {
		return c, err
	}
	for range 3 {
		d, err := b.kernelMemoryOfRebuild()
		if err != nil {
			return c, err
		}
		c.kernelBytes = append(c.kernelBytes, d)
	}
	if c.execFloorBig, c.execCPUBig, err = b.execFloor(nftdp.TableName, false); err != nil {
		return c, err
	}
	if c.execFloorTiny, c.execCPUTiny, err = b.execFloor(benchNSPrefix+"floor", true); err != nil {
		return c, err
	}
	return c, nil
}

// count reads nft's JSON listing.
func (c *ruleSetCost) count(listing string) error {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(listing), &doc); err != nil {
		return fmt.Errorf("reading nft's JSON listing: %w", err)
	}
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			switch kind {
			case "set", "map":
				c.setsOrMaps++
				var s struct {
					Elem []json.RawMessage `json:"elem"`
				}
				if err := json.Unmarshal(raw, &s); err != nil {
					return err
				}
				c.elements += len(s.Elem)
			case "rule":
				c.rules++
			case "chain":
				c.chains++
			case "counter":
				c.counters++
			}
		}
	}
	return nil
}

// kernelMemoryOfRebuild deletes the table and has a new reconciler (whose first apply
// rebuilds the table whole) put it back, returning how much the kernel's slab and vmalloc
// memory grew. The figure is machine-wide, so other work on the machine adds noise.
func (b *policyBench) kernelMemoryOfRebuild() (int64, error) {
	if _, err := b.ns.nft("delete", "table", string(nftdp.TableFamily), nftdp.TableName); err != nil {
		return 0, err
	}
	time.Sleep(500 * time.Millisecond) // objects are freed after an RCU grace period
	before, err := kernelMemory()
	if err != nil {
		return 0, err
	}
	err = b.ns.do(func() error {
		r, err := nftdp.NewKernel(b.w.localNode, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		b.r = r
		return r.ApplyPolicy(b.ctx, &b.last)
	})
	if err != nil {
		return 0, err
	}
	time.Sleep(500 * time.Millisecond) // nft's own allocations are freed too
	after, err := kernelMemory()
	return after - before, err
}

// kernelMemory is Slab + VmallocUsed of /proc/meminfo, in bytes: where nf_tables keeps
// tables, chains, rules, sets and their elements.
func kernelMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || (fields[0] != "Slab:" && fields[0] != "VmallocUsed:") {
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("reading /proc/meminfo: %w", err)
		}
		total += kb * 1024
	}
	return total, sc.Err()
}

// execFloor is the median time of the smallest useful transaction (adding an element that is
// already there) on table: the cost of exec'ing nft and of what nft reads from the kernel
// before it sends anything, with no work of twill's. create makes a one-set table first.
func (b *policyBench) execFloor(table string, create bool) (wall, cpu time.Duration, err error) {
	var times []time.Duration
	err = b.ns.do(func() error {
		nft, err := knftables.New(nftdp.TableFamily, table)
		if err != nil {
			return err
		}
		set := "local4"
		if create {
			set = "s"
			tx := nft.NewTransaction()
			tx.Add(&knftables.Table{})
			tx.Add(&knftables.Set{Name: set, Type: "ipv4_addr"})
			if err := nft.Run(b.ctx, tx); err != nil {
				return err
			}
		}
		before := cpuTimes().children
		for range 21 {
			tx := nft.NewTransaction()
			tx.Add(&knftables.Element{Set: set, Key: []string{"10.255.255.254"}})
			start := time.Now()
			if err := nft.Run(b.ctx, tx); err != nil {
				return err
			}
			times = append(times, time.Since(start))
		}
		cpu = (cpuTimes().children - before) / 21
		if create {
			tx := nft.NewTransaction()
			tx.Delete(&knftables.Table{})
			return nft.Run(b.ctx, tx)
		}
		tx := nft.NewTransaction()
		tx.Delete(&knftables.Element{Set: set, Key: []string{"10.255.255.254"}})
		return nft.Run(b.ctx, tx)
	})
	return Percentile(times, 50), cpu, err
}

func (c ruleSetCost) measurements(cond policyConditions) []Measurement {
	k := slices.Clone(c.kernelBytes)
	slices.Sort(k)
	var kernel float64
	if len(k) > 0 {
		kernel = float64(k[len(k)/2]) / (1 << 20)
	}
	base := cond.String()
	return []Measurement{
		{Metric: "policy_nft_exec_floor_cpu_big_table", Value: Millis(c.execCPUBig), Unit: "ms",
			Conditions: "nft's CPU time (user+system) per one-element transaction on the benchmark's table, mean of 21; " + base},
		{Metric: "policy_nft_exec_floor_cpu_tiny_table", Value: Millis(c.execCPUTiny), Unit: "ms",
			Conditions: "the same on a table holding one empty set; " + base},
		{Metric: "policy_ruleset_elements", Value: float64(c.elements), Unit: "elements",
			Conditions: fmt.Sprintf("set and map elements in nft -j list table (%d sets/maps, %d chains, %d rules, %d counters); %s",
				c.setsOrMaps, c.chains, c.rules, c.counters, base)},
		{Metric: "policy_ruleset_listing", Value: float64(c.listingBytes) / 1024, Unit: "KiB", Conditions: "nft list table text; " + base},
		{Metric: "policy_ruleset_kernel_memory", Value: kernel, Unit: "MiB",
			Conditions: fmt.Sprintf("growth of /proc/meminfo Slab+VmallocUsed when the table is rebuilt, median of %d rebuilds (machine-wide: noisy); %s", len(k), base)},
		{Metric: "policy_nft_exec_floor_big_table", Value: Millis(c.execFloorBig), Unit: "ms",
			Conditions: "median of 21 one-element nft -f transactions (an element already there) on the benchmark's table: exec + nft's reading of the table; " + base},
		{Metric: "policy_nft_exec_floor_tiny_table", Value: Millis(c.execFloorTiny), Unit: "ms",
			Conditions: "the same on a table holding one empty set, in the same namespace: the cost of exec'ing nft alone; " + base},
	}
}

// nftVersion is the nft binary's version, for the conditions.
func nftVersion() string {
	out, err := exec.Command("nft", "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out))
	if len(f) >= 2 {
		return f[1]
	}
	return strings.TrimSpace(string(out))
}
