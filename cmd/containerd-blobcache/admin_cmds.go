package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
)

// adminCommands are the commands that talk to a running daemon.
var adminCommands = map[string]func(args []string, stdout, stderr io.Writer) error{
	"stats":    statsCmd,
	"ls":       lsCmd,
	"gc":       gcCmd,
	"verify":   verifyCmd,
	"rm":       rmCmd,
	"prefetch": prefetchCmd,
}

func commandContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func statsCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("stats", stderr)
	af := addAdminFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err}
	}
	if len(pos) > 0 {
		return usageError{fmt.Errorf("stats takes no arguments")}
	}
	var st adminapi.StatsResponse
	if err := af.request(http.MethodGet, adminapi.PathStats, nil, &st); err != nil {
		return err
	}
	if *af.json {
		return printJSON(stdout, st)
	}
	s := st.Store
	limit := "none"
	if s.MaxSize > 0 {
		limit = fmt.Sprintf("%s (%.0f%% used; evicts above %s down to %s)", humanBytes(s.MaxSize), 100*float64(s.Size)/float64(s.MaxSize), humanBytes(s.High), humanBytes(s.Low))
	}
	fmt.Fprintf(stdout, "daemon:    containerd-blobcache %s\n", st.Version)
	fmt.Fprintf(stdout, "store:     %s in %d blobs, limit %s\n", humanBytes(s.Size), s.Blobs, limit)
	fmt.Fprintf(stdout, "content:   %d manifests, %d tags, %d blobs held by containerd\n", s.Manifests, s.Tags, s.Held)
	fmt.Fprintf(stdout, "since:     %s\n\n", st.Since.Local().Format("2006-01-02 15:04:05"))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGISTRY\tREQUESTS\tHITS\tMISSES\tBYPASS\tSTALE\tERRORS\tHIT RATIO\tFROM CACHE\tFROM PEERS\tFROM UPSTREAM")
	regs := make([]string, 0, len(st.Registries))
	for r := range st.Registries {
		regs = append(regs, r)
	}
	sort.Strings(regs)
	row := func(name string, t adminapi.TrafficStats) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f%%\t%s\t%s\t%s\n", name, t.Requests, t.Hits+t.Negative, t.Misses+t.PeerMisses, t.Bypassed, t.Stale, t.Errors,
			100*t.HitRatio, humanBytes(t.BytesFromCache), humanBytes(t.BytesFromPeer), humanBytes(t.BytesFromUpstream))
	}
	for _, r := range regs {
		row(r, st.Registries[r])
	}
	row("total", st.Total)
	if st.Content.Requests > 0 {
		// The content API's Info and Read calls: hits and misses of the store.
		row("content API", st.Content)
	}
	if st.Peer.Requests > 0 {
		// Blobs this node served to other nodes of the cluster tier.
		row("served to peers", st.Peer)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return printPeers(stdout, st.Peers)
}

// printPeers lists the cluster tier's nodes and their state.
func printPeers(stdout io.Writer, peers []adminapi.PeerStatus) error {
	if len(peers) == 0 {
		return nil
	}
	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tSTATE\tRETRIED AT")
	for _, p := range peers {
		retry := ""
		if p.DownUntil != nil {
			retry = p.DownUntil.Local().Format("15:04:05")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Address, p.State, retry)
	}
	return tw.Flush()
}

func lsCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ls", stderr)
	af := addAdminFlags(fs)
	registry := fs.String("registry", "", "only this registry")
	repo := fs.String("repository", "", "only this repository")
	prefix := fs.String("digest", "", "only digests starting with this (sha256:abc...)")
	limit := fs.Int("limit", 0, "at most this many entries (0: all)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err}
	}
	kind := "all"
	switch len(pos) {
	case 0:
	case 1:
		kind = pos[0]
	default:
		return usageError{fmt.Errorf("ls takes at most one of tags, manifests, blobs")}
	}
	q := url.Values{"kind": {kind}, "registry": {*registry}, "repository": {*repo}, "digest": {*prefix}, "limit": {strconv.Itoa(*limit)}}
	var entries []adminapi.ListEntry
	if err := af.request(http.MethodGet, adminapi.PathList+"?"+q.Encode(), nil, &entries); err != nil {
		return err
	}
	if *af.json {
		return printJSON(stdout, entries)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	var tags, blobs []adminapi.ListEntry
	for _, e := range entries {
		if e.Kind == "tag" {
			tags = append(tags, e)
		} else {
			blobs = append(blobs, e)
		}
	}
	if len(tags) > 0 {
		fmt.Fprintln(tw, "TAG\tDIGEST\tSIZE\tFETCHED")
		for _, e := range tags {
			fmt.Fprintf(tw, "%s/%s:%s\t%s\t%s\t%s\n", e.Registry, e.Repository, e.Tag, short(e.Digest), humanBytes(e.Size), ago(*e.FetchedAt))
		}
		if len(blobs) > 0 {
			fmt.Fprintln(tw, "\t\t\t")
		}
	}
	if len(blobs) > 0 {
		fmt.Fprintln(tw, "KIND\tDIGEST\tSIZE\tLAST ACCESS\tHELD\tSOURCES")
		for _, e := range blobs {
			held := ""
			if e.Held {
				held = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Kind, short(e.Digest), humanBytes(e.Size), ago(*e.LastAccess), held, strings.Join(e.Sources, ","))
		}
	}
	if len(entries) == 0 {
		fmt.Fprintln(tw, "nothing cached")
	}
	return tw.Flush()
}

func short(d digest.Digest) string {
	s := d.String()
	if len(s) > 7+12 {
		return s[:7+12]
	}
	return s
}

func gcCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gc", stderr)
	af := addAdminFlags(fs)
	target := fs.String("target", "", "evict down to this size (\"5GiB\", bytes); default the low watermark")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err}
	}
	if len(pos) > 0 {
		return usageError{fmt.Errorf("gc takes no arguments")}
	}
	req := adminapi.GCRequest{Target: -1}
	if *target != "" {
		n, err := config.ParseSize(*target)
		if err != nil {
			return usageError{fmt.Errorf("--target: %v", err)}
		}
		req.Target = int64(n)
	}
	var res adminapi.GCResponse
	if err := af.request(http.MethodPost, adminapi.PathGC, req, &res); err != nil {
		return err
	}
	if *af.json {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "evicted %d blobs (%s) and %d tags; store now %s", res.Blobs, humanBytes(res.Bytes), res.Tags, humanBytes(res.Size))
	if res.InUse+res.Held > 0 {
		fmt.Fprintf(stdout, "; skipped %d in use and %d held by containerd", res.InUse, res.Held)
	}
	fmt.Fprintln(stdout)
	return nil
}

// verifyFound makes verify exit 1 when it found (and repaired) something, naming what: an
// orphan is an intact file the index lacked, not damage.
func verifyFound(rep adminapi.VerifyResponse) error {
	return fmt.Errorf("verify found %d corrupt blobs, %d missing blobs, %d orphans (blob files without a record), %d leftover fills (repaired: see above)",
		len(rep.Corrupt), len(rep.Missing), len(rep.Orphans), rep.LeftoverFills)
}

func verifyCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("verify", stderr)
	af := addAdminFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err}
	}
	req := adminapi.VerifyRequest{}
	for _, a := range pos {
		d, err := digest.Parse(a)
		if err != nil {
			return usageError{fmt.Errorf("%q is not a digest: %v", a, err)}
		}
		req.Digests = append(req.Digests, d)
	}
	var rep adminapi.VerifyResponse
	if err := af.request(http.MethodPost, adminapi.PathVerify, req, &rep); err != nil {
		return err
	}
	if *af.json {
		if err := printJSON(stdout, rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "checked %d blobs (%s): %d corrupt (quarantined), %d missing (records dropped), %d orphan files, %d leftover fills\n",
			rep.Checked, humanBytes(rep.Bytes), len(rep.Corrupt), len(rep.Missing), len(rep.Orphans), rep.LeftoverFills)
		for _, l := range []struct {
			what string
			ds   []digest.Digest
		}{{"corrupt", rep.Corrupt}, {"missing", rep.Missing}, {"orphan", rep.Orphans}} {
			for _, d := range l.ds {
				fmt.Fprintf(stdout, "  %s %s\n", l.what, d)
			}
		}
	}
	if len(rep.Corrupt)+len(rep.Missing)+len(rep.Orphans)+rep.LeftoverFills > 0 {
		return verifyFound(rep)
	}
	return nil
}

func rmCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rm", stderr)
	af := addAdminFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err}
	}
	if len(pos) != 1 {
		return usageError{fmt.Errorf("rm takes one of: DIGEST, REGISTRY, REGISTRY/REPOSITORY, REGISTRY/REPOSITORY:TAG")}
	}
	req, err := parseRemoveTarget(pos[0])
	if err != nil {
		return usageError{err}
	}
	var res adminapi.RemoveResponse
	if err := af.request(http.MethodPost, adminapi.PathRemove, req, &res); err != nil {
		return err
	}
	if *af.json {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "removed %d blobs (%s) and %d tags", res.Blobs, humanBytes(res.Bytes), res.Tags)
	if res.InUse+res.Held > 0 {
		fmt.Fprintf(stdout, "; kept %d in use and %d held by containerd", res.InUse, res.Held)
	}
	fmt.Fprintln(stdout)
	return nil
}

// parseRemoveTarget reads "sha256:...", "registry", "registry/repo" or "registry/repo:tag".
func parseRemoveTarget(s string) (adminapi.RemoveRequest, error) {
	if d, err := digest.Parse(s); err == nil {
		return adminapi.RemoveRequest{Digest: d}, nil
	}
	if !strings.Contains(s, "/") {
		if err := config.ValidRegistryHost(s); err != nil {
			return adminapi.RemoveRequest{}, err
		}
		return adminapi.RemoveRequest{Registry: s}, nil
	}
	named, err := reference.ParseNamed(s)
	if err != nil {
		return adminapi.RemoveRequest{}, fmt.Errorf("%q: %v (give the registry explicitly, e.g. docker.io/library/busybox:latest)", s, err)
	}
	req := adminapi.RemoveRequest{Registry: reference.Domain(named), Repository: reference.Path(named)}
	if t, ok := named.(reference.Tagged); ok {
		req.Tag = t.Tag()
	}
	return req, nil
}

func prefetchCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("prefetch", stderr)
	af := addAdminFlags(fs)
	platform := fs.String("platform", "", "platform to prefetch (default: this machine's, as containerd picks it)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err}
	}
	if len(pos) == 0 {
		return usageError{fmt.Errorf("prefetch needs at least one IMAGE")}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	failed := 0
	for _, image := range pos {
		if err := prefetchOne(ctx, c, image, *platform, *af.json, stdout); err != nil {
			var down errDaemonDown
			if errors.As(err, &down) {
				return err
			}
			fmt.Fprintf(stderr, "containerd-blobcache: prefetch %s: %v\n", image, err)
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images could not be prefetched", failed, len(pos))
	}
	return nil
}

func prefetchOne(ctx context.Context, c *adminClient, image, platform string, asJSON bool, out io.Writer) error {
	resp, err := c.call(ctx, http.MethodPost, adminapi.PathPrefetch, adminapi.PrefetchRequest{Image: image, Platform: platform})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	p := newProgress(out, isTerminal(out) && !asJSON)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev adminapi.PrefetchEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("bad progress line: %v", err)
		}
		if asJSON {
			fmt.Fprintln(out, sc.Text())
		} else {
			p.event(ev)
		}
		if ev.Event == "error" {
			p.finish()
			return errors.New(ev.Error)
		}
		if ev.Event == "done" {
			p.finish()
			return nil
		}
	}
	p.finish()
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("the daemon ended the prefetch without a result")
}

// parseInterleaved parses flags that may come after positional arguments
// ("ls tags --json") and returns the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
