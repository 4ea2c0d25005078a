package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"

	"github.com/twill-net/twill/internal/lab/upstream"
)

// labRun is what a suite that starts a lab of its own prepares first: twill's binaries, the
// pinned upstream binaries, a work directory for the lab's files and logs, and a lab name
// with a random suffix, so that two runs never collide.
type labRun struct {
	twillBin, cniDir, upstreamBin, dir, name string
}

// prepareLabRun finds the binaries (building the upstream ones on first use when upstreamBin
// is empty) and makes the work directory, twill-bench-SUITE-*.
func prepareLabRun(ctx context.Context, twillBin, upstreamBin, suite, namePrefix string, upstreamNames ...string) (*labRun, error) {
	r := &labRun{upstreamBin: upstreamBin}
	var err error
	if r.twillBin, r.cniDir, err = twillBinaries(twillBin); err != nil {
		return nil, err
	}
	if r.upstreamBin == "" {
		if r.upstreamBin, err = upstream.Binaries(ctx, upstreamNames...); err != nil {
			return nil, err
		}
	}
	if r.dir, err = os.MkdirTemp("", "twill-bench-"+suite+"-"); err != nil {
		return nil, err
	}
	r.name = fmt.Sprintf("%s%04x", namePrefix, rand.IntN(1<<16))
	return r, nil
}

// keepLogsOnFailure removes the work directory after a run that went well, and keeps it
// after one that failed, saying where: its logs are what explains the failure. Deferred with
// the suite's named error.
func (r *labRun) keepLogsOnFailure(err *error, say func(format string, args ...any)) {
	if *err != nil {
		say("failed; the logs are kept in %s", r.dir)
		return
	}
	*err = os.RemoveAll(r.dir)
}
