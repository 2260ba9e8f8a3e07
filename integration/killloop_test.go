package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// TestKillLoopDuringPulls kills the daemon with SIGKILL at a random moment of a cold pull, again and
// again (BLOBCACHE_KILL_LOOPS, default 20): every pull must complete (containerd falls back
// to the origin, or resumes), and after each restart the store must be consistent (no
// fill left, every file hashing to its name, index and files agreeing) and serve every blob
// of the image intact.
func TestKillLoopDuringPulls(t *testing.T) {
	loops := 20
	if v := os.Getenv("BLOBCACHE_KILL_LOOPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("BLOBCACHE_KILL_LOOPS=%q", v)
		}
		loops = n
	}
	harness.RequireRoot(t)
	harness.Tools(t)
	reg := harness.StartRegistry(t)
	o := origin{reg: reg, proxy: harness.StartCountingProxy(t, reg.URL)}
	hostsDir := t.TempDir()
	root := filepath.Join(t.TempDir(), "store")
	cfg := harness.DaemonConfig{Root: root, Address: harness.FreeAddr(t), Registries: []string{o.proxy.Host}, LogLevel: "info"}
	daemon := harness.StartDaemon(t, cfg)
	if _, err := harness.WriteHostsToml(hostsDir, o.proxy.Host, daemon.URL); err != nil {
		t.Fatal(err)
	}
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: hostsDir})
	// Pace the daemon's downloads (about 6 MB/s per blob, so a pull through the mirror
	// takes around a second) so that the kill lands inside the pull on a fast machine too.
	// containerd's own requests to the origin, after a kill, are not paced.
	harness.InjectFaults(t, o.proxy).Add(harness.Fault{Kind: harness.FaultSlowDrip, Request: harness.KindBlob, DripChunk: 128 << 10, DripInterval: 20 * time.Millisecond})

	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("BLOBCACHE_KILL_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("kill seed %d (BLOBCACHE_KILL_SEED to replay)", seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	var pulled, killedMidPull, fillsLeft, fallbackPulls, orphans int
	var pullTimes []time.Duration
	for i := range loops {
		// A new image each time, so every pull is cold: about 15 MB in 3 layers.
		spec := harness.ImageSpec{Layers: []harness.LayerSpec{
			{Seed: 50000 + uint64(10*i), Files: 3, FileSize: 2 << 20},
			{Seed: 50001 + uint64(10*i), Files: 3, FileSize: 1 << 20},
			{Seed: 50002 + uint64(10*i), Files: 6, FileSize: 1 << 20},
		}}
		repo := fmt.Sprintf("kill/img%d", i)
		im, ref := o.push(t, repo, "v1", spec)
		o.proxy.Reset()

		type result struct {
			took time.Duration
			err  error
		}
		done := make(chan result, 1)
		go func() {
			_, took, err := ctrd.PullE(context.Background(), fmt.Sprintf("kill%d", i), ref, hostsDir)
			done <- result{took, err}
		}()
		// A random moment of the download: once the daemon has a fill on disk (polled,
		// bounded), then a random 0-400 ms more.
		began := time.Now()
		var res result
		finished := false
		for deadline := time.Now().Add(30 * time.Second); !finished && time.Now().Before(deadline); {
			if entries, _ := os.ReadDir(filepath.Join(root, "fills")); len(entries) > 0 {
				break
			}
			select {
			case res = <-done:
				finished = true
			case <-time.After(5 * time.Millisecond):
			}
		}
		if !finished {
			select {
			case res = <-done:
			case <-time.After(time.Duration(rng.Int64N(int64(400 * time.Millisecond)))):
			}
		}
		delay := time.Since(began)
		if err := daemon.Kill(); err != nil {
			t.Fatalf("loop %d: kill: %v", i, err)
		}
		if res.took == 0 && res.err == nil {
			killedMidPull++
			res = <-done
		}
		if res.err != nil {
			t.Fatalf("loop %d: pull failed after the kill at %v: %v", i, delay, res.err)
		}
		pulled++
		pullTimes = append(pullTimes, res.took)
		if len(o.proxy.Snapshot().Direct().Requests) > 0 {
			fallbackPulls++
		}
		if entries, _ := os.ReadDir(filepath.Join(root, "fills")); len(entries) > 0 {
			fillsLeft += len(entries)
		}

		// Restart on the same root: leftover fills are removed at start. Then stop it to
		// check the store offline, and start it again to check what it serves.
		daemon = harness.StartDaemon(t, cfg)
		if err := daemon.Stop(); err != nil {
			t.Fatal(err)
		}
		rep := verifyStoreOffline(t, root)
		orphans += rep.Orphans
		daemon = harness.StartDaemon(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		for _, b := range im.Blobs() {
			r, err := daemon.GetBlob(ctx, o.proxy.Host, repo, b.Digest)
			if err != nil || r.Status != http.StatusOK || r.Digest != b.Digest || r.Size != b.Size {
				t.Errorf("loop %d: after restart GET %s: %v %d, %d bytes hashing to %s", i, b.Digest, err, r.Status, r.Size, r.Digest)
			}
		}
		cancel()
		// The daemon's own check agrees: nothing corrupt, missing or unrecorded.
		if v := decode[verifyJSON](t, daemon.MustCLI(t, "verify", "--json")); len(v.Corrupt)+len(v.Missing)+len(v.Orphans) != 0 {
			t.Errorf("loop %d: verify after the kill: %+v", i, v)
		}
		if rep.Orphans > 0 {
			// Served once above: the commit of that fetch must have recorded the orphan.
			if err := daemon.Stop(); err != nil {
				t.Fatal(err)
			}
			if again := verifyStoreOffline(t, root); again.Orphans > 0 {
				t.Errorf("loop %d: %d orphan blob files still unrecorded after they were requested", i, again.Orphans)
			}
			daemon = harness.StartDaemon(t, cfg)
		}
		t.Logf("loop %d: killed %v into the pull (pull took %v), store: %d files, %d records", i, delay.Round(time.Millisecond), res.took.Round(time.Millisecond), rep.Files, rep.Records)
		if t.Failed() {
			break
		}
	}
	var total time.Duration
	for _, d := range pullTimes {
		total += d
	}
	writeMeasure(t, "killloop loops=%d pulls_completed=%d killed_mid_pull=%d pulls_with_fallback=%d fills_left_by_kills=%d (all removed at restart) orphan_files=%d (intact, recorded when next requested) mean_pull=%v seed=%d",
		loops, pulled, killedMidPull, fallbackPulls, fillsLeft, orphans, (total / time.Duration(max(len(pullTimes), 1))).Round(time.Millisecond), seed)
	if killedMidPull < loops/2 {
		t.Errorf("only %d of %d kills landed during a pull: the loop tests little", killedMidPull, loops)
	}
}
