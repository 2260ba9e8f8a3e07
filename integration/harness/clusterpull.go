package harness

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// NodePull is one node's pull: its wall time, when it ended, and how.
type NodePull struct {
	Node int
	Took time.Duration
	End  time.Time
	Err  error
}

// PullAt starts ref's pull (ClusterNode.Pull, containerd namespace ctrNS, each bounded by
// timeout) on each of the nodes at the same moment, and returns a channel that yields every
// result and is then closed.
func (c *Cluster) PullAt(nodes []int, ref, ctrNS string, timeout time.Duration) <-chan NodePull {
	out := make(chan NodePull, len(nodes))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			<-start
			took, err := c.Nodes[i].Pull(ctx, ref, ctrNS)
			out <- NodePull{Node: i, Took: took, End: time.Now(), Err: err}
		}()
	}
	close(start)
	go func() { wg.Wait(); close(out) }()
	return out
}

// Pull pulls ref ("host/repo:tag") on the node: with ctr in containerd namespace ctrNS when
// the node runs containerd, otherwise as a client of the node's mirror (PullHTTP). It
// returns the pull's wall time.
func (n *ClusterNode) Pull(ctx context.Context, ref, ctrNS string) (time.Duration, error) {
	if n.Containerd != nil {
		out, took, err := n.Containerd.PullE(ctx, ctrNS, ref, n.HostsDir)
		if err != nil {
			return took, fmt.Errorf("node %d: %w\n%s", n.Index, err, out)
		}
		return took, nil
	}
	start := time.Now()
	err := n.PullHTTP(ctx, ref, nil)
	return time.Since(start), err
}

// PullHTTP fetches ref's manifest and every blob it names through the node's mirror (from
// inside the node's namespace), as containerd would with the mirror in hosts.toml: blobs
// three at a time, each hashed and checked against its descriptor. header is added to every
// request (an Authorization, say).
func (n *ClusterNode) PullHTTP(ctx context.Context, ref string, header http.Header) error {
	registry, rest, ok := strings.Cut(ref, "/")
	repo, tag, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return fmt.Errorf("reference %q is not host/repo:tag", ref)
	}
	get := func(ctx context.Context, path string, accept string) (*http.Response, error) {
		u := n.Daemon.URL + path + "?ns=" + url.QueryEscape(registry)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := n.Daemon.Client.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		return resp, nil
	}
	resp, err := get(ctx, "/v2/"+repo+"/manifests/"+tag, ocispec.MediaTypeImageManifest)
	if err != nil {
		return fmt.Errorf("node %d: %w", n.Index, err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("node %d: manifest: %w", n.Index, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return fmt.Errorf("node %d: manifest: %w", n.Index, err)
	}
	fetch := fetchBlobFunc(get, repo)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	descs := append([]ocispec.Descriptor{m.Config}, m.Layers...)
	errs := make([]error, len(descs))
	slots := make(chan struct{}, 3)
	var wg sync.WaitGroup
	for i, desc := range descs {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; wg.Done() }()
			errs[i] = fetch(ctx, desc)
			if errs[i] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node %d: %w", n.Index, err)
	}
	return nil
}

// fetchBlob is one blob of PullHTTP.
func fetchBlobFunc(get func(context.Context, string, string) (*http.Response, error), repo string) func(context.Context, ocispec.Descriptor) error {
	return func(ctx context.Context, desc ocispec.Descriptor) error {
		resp, err := get(ctx, "/v2/"+repo+"/blobs/"+desc.Digest.String(), "")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		h := sha256.New()
		size, err := io.Copy(h, resp.Body)
		if err != nil {
			return fmt.Errorf("blob %s after %d bytes: %w", desc.Digest, size, err)
		}
		if got := digest.NewDigest(digest.SHA256, h); got != desc.Digest || size != desc.Size {
			return fmt.Errorf("blob %s: got %s, %d bytes (want %d)", desc.Digest, got, size, desc.Size)
		}
		return nil
	}
}
