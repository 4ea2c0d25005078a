package cni

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/twill-net/twill/internal/cni/spool"
	"github.com/twill-net/twill/internal/cniproto"
)

func TestParseNetConfDefaults(t *testing.T) {
	conf, err := ParseNetConf([]byte(`{"cniVersion":"1.1.0","name":"pods","type":"twill-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.AgentSocket != cniproto.DefaultSocket || conf.PendingDeleteDir != spool.DefaultDir || conf.Timeout != 5*time.Second {
		t.Errorf("defaults: socket %q, pending dir %q, timeout %s", conf.AgentSocket, conf.PendingDeleteDir, conf.Timeout)
	}
	conf, err = ParseNetConf([]byte(`{"cniVersion":"1.1.0","name":"pods","type":"twill-cni",
		"agentSocket":"/x.sock","pendingDeleteDir":"/p","agentTimeout":"750ms"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.AgentSocket != "/x.sock" || conf.PendingDeleteDir != "/p" || conf.Timeout != 750*time.Millisecond {
		t.Errorf("explicit values not kept: %+v", conf)
	}
}

func TestParseNetConfErrors(t *testing.T) {
	cases := []struct {
		conf string
		code uint
		says string
	}{
		{`{"cniVersion":"1.1.0","name":`, types.ErrDecodingFailure, "cannot decode"},
		{`{"cniVersion":"1.1.0","name":"pods","type":"twill-cni","agentTimeout":"soon"}`, types.ErrInvalidNetworkConfig, `invalid agentTimeout "soon"`},
		{`{"cniVersion":"1.1.0","name":"pods","type":"twill-cni","agentTimeout":"-1s"}`, types.ErrInvalidNetworkConfig, "positive Go duration"},
		{`{"cniVersion":"1.1.0","name":"pods","type":"twill-cni","agentTimeout":5}`, types.ErrDecodingFailure, "agentTimeout"},
	}
	for _, tc := range cases {
		_, err := ParseNetConf([]byte(tc.conf))
		var cniErr *types.Error
		if !errors.As(err, &cniErr) {
			t.Errorf("%s: got %v, want a CNI error", tc.conf, err)
			continue
		}
		if cniErr.Code != tc.code || !strings.Contains(cniErr.Msg, tc.says) {
			t.Errorf("%s: got code %d %q, want code %d mentioning %q", tc.conf, cniErr.Code, cniErr.Msg, tc.code, tc.says)
		}
	}
}
