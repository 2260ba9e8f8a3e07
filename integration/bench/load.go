package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// WriteRandomBlob writes size seeded pseudo-random bytes to path and returns their digest.
// Random bytes do not compress, so no layer of the path can shortcut them.
func WriteRandomBlob(path string, seed uint64, size int64) (digest.Digest, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	copy(key[8:], "containerd-blobcache-bench")
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	if _, err := io.CopyN(w, rand.NewChaCha8(key), size); err != nil {
		f.Close()
		return "", err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return digest.NewDigest(digest.SHA256, h), nil
}

// NewLoadClient is an HTTP client for load generation: no proxy from the environment, no
// transparent decompression, enough idle connections for every concurrent client.
func NewLoadClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}}
}

// discard is io.Discard without ReaderFrom, so that io.CopyBuffer uses the large buffer.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// FetchResult is what ConcurrentGET measured.
type FetchResult struct {
	Wall time.Duration
	// Done is how many clients received every body whole (want bytes each).
	Done  int
	Bytes int64
	Err   error
}

// ConcurrentGET starts n clients at once, each GETting url (with header) and reading the body to the end,
// and returns when all have finished or ctx ends. Every body must be want bytes long.
func ConcurrentGET(ctx context.Context, client *http.Client, url string, header http.Header, n int, want int64) FetchResult {
	return RepeatedGET(ctx, client, url, header, n, 1, want)
}

// RepeatedGET is ConcurrentGET where each client GETs the body repeat times, one after the
// other, so that a sample of a fast transfer lasts long enough to average out a busy moment.
func RepeatedGET(ctx context.Context, client *http.Client, url string, header http.Header, n, repeat int, want int64) FetchResult {
	var (
		mu    sync.Mutex
		res   FetchResult
		wg    sync.WaitGroup
		start = make(chan struct{})
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			buf := make([]byte, 1<<20)
			for range repeat {
				got, err := fetchOnce(ctx, client, url, header, buf)
				if err == nil && got != want {
					err = fmt.Errorf("GET %s: %d bytes, want %d", url, got, want)
				}
				mu.Lock()
				res.Bytes += got
				if err != nil && res.Err == nil {
					res.Err = err
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
			mu.Lock()
			res.Done++
			mu.Unlock()
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	res.Wall = time.Since(t0)
	return res
}

// fetchOnce GETs url and reads the body into buf (discarded). The caller owns buf, so that a
// load of many small requests does not allocate a buffer per request: the garbage collector
// would then run in the load generator all the time and add its pauses to the latencies.
func fetchOnce(ctx context.Context, client *http.Client, url string, header http.Header, buf []byte) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	n, err := io.CopyBuffer(discard{}, resp.Body, buf)
	if err != nil {
		return n, fmt.Errorf("GET %s: body after %d bytes: %w", url, n, err)
	}
	return n, nil
}

// RateResult is what FixedRate measured, per request.
type RateResult struct {
	// Latency is from the request's scheduled start to the end of its body.
	Latency []time.Duration
	// Lag is how late the load generator itself sent each request: when it is close to
	// Latency, the machine (not the server) is what the figure shows.
	Lag []time.Duration
}

// FixedRate sends n GETs of url at rate per second (open loop: a request is sent on its
// schedule whether or not earlier ones have answered, up to inflight at once) and returns the
// latency of each, measured from its scheduled start, so that a stall counts against the
// server instead of silently slowing the load down. ctx bounds the whole run.
func FixedRate(ctx context.Context, client *http.Client, url string, header http.Header, n, rate, inflight int) (RateResult, error) {
	interval := time.Second / time.Duration(rate)
	res := RateResult{Latency: make([]time.Duration, n), Lag: make([]time.Duration, n)}
	errs := make(chan error, 1)
	sem := make(chan struct{}, inflight)
	// One buffer per request in flight, handed over with the slot.
	bufs := make(chan []byte, inflight)
	for range inflight {
		bufs <- make([]byte, 32<<10)
	}
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		due := t0.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				wg.Wait()
				return RateResult{}, ctx.Err()
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return RateResult{}, ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			buf := <-bufs
			defer func() { bufs <- buf }()
			res.Lag[i] = time.Since(due)
			_, err := fetchOnce(ctx, client, url, header, buf)
			res.Latency[i] = time.Since(due)
			if err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return RateResult{}, err
	default:
	}
	return res, nil
}

// PeakRSS returns the peak resident set size (VmHWM) of process pid, in bytes.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("unexpected VmHWM line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// ResetPeakRSS makes VmHWM start again from the current RSS (writing 5 to clear_refs), so
// that a peak can be measured over one phase of a long-lived process.
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0o200)
}
