package agent

import (
	"bytes"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// firstSyncTimes are the phases of the service loop's first full sync after a start, logged
// once at info: how long a restarted agent leaves new services unserved, and where that time
// goes (operators compare it with kube-proxy's; we profile it).
type firstSyncTimes struct {
	mu sync.Mutex
	// informersStarted is when the services informers were started; firstEvent and
	// lastEvent bound the delivery of their initial lists (the list requests and their
	// decoding end before the first event).
	informersStarted, firstEvent, lastEvent time.Time
	events                                  int
	done                                    bool
}

// started notes that the informers are started (the first call counts).
func (f *firstSyncTimes) started() {
	f.mu.Lock()
	if f.informersStarted.IsZero() {
		f.informersStarted = time.Now()
	}
	f.mu.Unlock()
}

// event notes an informer event until the first sync is done.
func (f *firstSyncTimes) event() {
	f.mu.Lock()
	if !f.done {
		now := time.Now()
		if f.firstEvent.IsZero() {
			f.firstEvent = now
		}
		f.lastEvent = now
		f.events++
	}
	f.mu.Unlock()
}

// report logs the first sync, which the caches' sync at synced, the calculator's flush from
// flushStart to applyStart and the datapath's apply from applyStart to now made. Only the
// first call logs.
func (f *firstSyncTimes) report(log *slog.Logger, services int, synced, flushStart, applyStart time.Time) {
	now := time.Now()
	f.mu.Lock()
	if f.done {
		f.mu.Unlock()
		return
	}
	f.done = true
	informers, first, last, events := f.informersStarted, f.firstEvent, f.lastEvent, f.events
	f.mu.Unlock()
	d := func(from, to time.Time) time.Duration {
		if from.IsZero() || to.IsZero() {
			return 0
		}
		return to.Sub(from).Round(time.Millisecond)
	}
	start := processStart()
	msg := "services: first full sync of " + strconv.Itoa(services) + " services programmed in " +
		d(start, now).String() + " (cache sync " + d(informers, synced).String() + ", calculate " +
		d(flushStart, applyStart).String() + ", apply " + d(applyStart, now).String() + ")"
	// Each milestone as time since the process started: before the informers start come the
	// process start-up, the clients, the Node and the datapaths; the initial lists are
	// requested and decoded before the first event, and delivered to the calculator until
	// the last.
	log.Info(msg, "services", services, "events", events,
		"informersStartedAt", d(start, informers), "firstEventAt", d(start, first),
		"lastEventAt", d(start, last), "syncedAt", d(start, synced),
		"flushStartAt", d(start, flushStart), "applyStartAt", d(start, applyStart))
}

// processStart is when this process started, from /proc/self/stat (in clock ticks since
// boot, 10 ms on common kernels); the zero time when it cannot be read.
var processStart = sync.OnceValue(func() time.Time {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return time.Time{}
	}
	// The command name, in parentheses, may hold spaces: fields are counted after it.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return time.Time{}
	}
	fields := bytes.Fields(stat[i+1:])
	const startTimeField = 22 - 3 // field 22 of the line; the first two precede the ')'
	if len(fields) <= startTimeField {
		return time.Time{}
	}
	ticks, err := strconv.ParseInt(string(fields[startTimeField]), 10, 64)
	if err != nil {
		return time.Time{}
	}
	var boot unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot); err != nil {
		return time.Time{}
	}
	const clockTicks = 100 // USER_HZ: sysconf(_SC_CLK_TCK) on Linux
	sinceStart := time.Duration(boot.Nano()) - time.Duration(ticks)*time.Second/clockTicks
	return time.Now().Add(-sinceStart)
})
