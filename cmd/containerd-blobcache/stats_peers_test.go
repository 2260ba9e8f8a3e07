package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
)

// stats shows the cluster tier: bytes from peers per registry, what the node served to
// peers, and the peers with their state.
func TestStatsShowsPeers(t *testing.T) {
	dir, err := os.MkdirTemp("", "bc-stats-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	until := time.Date(2026, 12, 1, 3, 4, 5, 0, time.UTC)
	reg := traffic.Stats{Requests: 3, Hits: 1, Misses: 1, PeerMisses: 1, BytesFromCache: 1 << 20, BytesFromPeer: 2 << 20, BytesFromUpstream: 3 << 20}
	resp := adminapi.StatsResponse{
		Version:    "test",
		Registries: map[string]adminapi.TrafficStats{"registry.example": {Stats: reg}},
		Total:      adminapi.TrafficStats{Stats: reg},
		Peer:       adminapi.TrafficStats{Stats: traffic.Stats{Requests: 2, Hits: 2, BytesFromCache: 5 << 20}},
		Peers: []adminapi.PeerStatus{
			{Address: "10.0.0.1:5057", State: "self"},
			{Address: "10.0.0.2:5057", State: "up"},
			{Address: "10.0.0.3:5057", State: "down", DownUntil: &until},
		},
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(resp)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	var out, errOut bytes.Buffer
	if code := run([]string{"stats", "--address", sock}, &out, &errOut); code != 0 {
		t.Fatalf("stats: exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{
		`(?m)^REGISTRY .* FROM CACHE +FROM PEERS +FROM UPSTREAM$`,
		`(?m)^registry\.example +3 +1 +2 .* 1\.0 MiB +2\.0 MiB +3\.0 MiB$`,
		`(?m)^served to peers +2 +2 .* 5\.0 MiB +0 B +0 B$`,
		`(?m)^PEER +STATE +RETRIED AT$`,
		`(?m)^10\.0\.0\.1:5057 +self *$`,
		`(?m)^10\.0\.0\.2:5057 +up *$`,
		`(?m)^10\.0\.0\.3:5057 +down +` + regexp.QuoteMeta(until.Local().Format("15:04:05")) + `$`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("stats output lacks %s:\n%s", want, out.String())
		}
	}
}
