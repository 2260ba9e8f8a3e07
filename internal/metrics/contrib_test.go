package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/internal/cluster"
)

// The Grafana dashboard in contrib/ is valid JSON and queries only metrics this package
// exports, so that it does not drift from the code.
func TestGrafanaDashboardUsesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("../../contrib/grafana/containerd-blobcache.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	m := New("test", fakeStore{})
	m.WatchPeers(func() []cluster.PeerState { return nil })
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range fams {
		exported[f.GetName()] = true
	}
	// Families with no sample yet (label vectors) are not gathered: name them from the code.
	for _, n := range []string{"requests_total", "request_duration_seconds", "served_bytes_total", "upstream_request_duration_seconds", "token_fetches_total", "peer_fetches_total"} {
		exported[Namespace+"_"+n] = true
	}
	used := regexp.MustCompile(`containerd_blobcache_[a-z_]+`).FindAllString(string(b), -1)
	if len(used) == 0 {
		t.Fatal("dashboard uses no containerd_blobcache metric")
	}
	for _, name := range used {
		base := name
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if s, ok := strings.CutSuffix(name, suffix); ok && exported[s] {
				base = s
			}
		}
		if !exported[base] {
			t.Errorf("dashboard queries %s, which the daemon does not export", name)
		}
	}
}
