package content

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// recordedCall is one observation a recordingObserver got.
type recordedCall struct {
	rpc    string
	result traffic.Result
	sent   int64
}

// recordingObserver records calls. A stream's call is recorded when its handler returns,
// which can be after the client saw the last message: tests await what they expect.
type recordingObserver struct {
	mu      sync.Mutex
	changed *sync.Cond
	calls   []recordedCall
}

func newRecordingObserver() *recordingObserver {
	o := &recordingObserver{}
	o.changed = sync.NewCond(&o.mu)
	return o
}

func (o *recordingObserver) ObserveRequest(r traffic.Request) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, recordedCall{r.Kind, r.Result, r.Bytes})
	o.changed.Broadcast()
}

// take waits until done says the calls recorded so far are complete (at most 10 s), then
// returns them and forgets them.
func (o *recordingObserver) take(t *testing.T, done func([]recordedCall) bool) []recordedCall {
	t.Helper()
	expired := false
	timer := time.AfterFunc(10*time.Second, func() {
		o.mu.Lock()
		expired = true
		o.changed.Broadcast()
		o.mu.Unlock()
	})
	defer timer.Stop()
	o.mu.Lock()
	defer o.mu.Unlock()
	for !done(o.calls) && !expired {
		o.changed.Wait()
	}
	if expired {
		t.Errorf("calls recorded: %+v, still incomplete after 10s", o.calls)
	}
	calls := o.calls
	o.calls = nil
	return calls
}

func hasCall(rpc string) func([]recordedCall) bool {
	return func(calls []recordedCall) bool {
		for _, c := range calls {
			if c.rpc == rpc {
				return true
			}
		}
		return false
	}
}

// The observer sees each call through containerd's own proxy client with its result: a
// lookup of a missing blob is a miss, of a stored one a hit, and a Read reports the bytes it
// sent.
func TestObserverCountsCallsAndReadBytes(t *testing.T) {
	obs := newRecordingObserver()
	s := newObservedServed(t, obs)
	ctx := t.Context()
	data, dgst := testBlob(300 << 10)

	if _, err := s.client.Info(ctx, dgst); !errdefs.IsNotFound(err) {
		t.Fatalf("Info before write: %v, want NotFound", err)
	}
	if got := obs.take(t, hasCall("info")); len(got) != 1 || got[0] != (recordedCall{"info", "miss", 0}) {
		t.Errorf("Info of a missing blob recorded %+v, want one info miss", got)
	}

	if err := content.WriteBlob(ctx, s.client, "observe", bytes.NewReader(data), desc(dgst, data)); err != nil {
		t.Fatalf("WriteBlob: %v", err)
	}
	for _, c := range obs.take(t, hasCall("write")) {
		if c.result == "error" || c.sent != 0 {
			t.Errorf("writing recorded %+v", c)
		}
	}

	if _, err := s.client.Info(ctx, dgst); err != nil {
		t.Fatal(err)
	}
	got, err := content.ReadBlob(ctx, s.client, desc(dgst, data))
	if err != nil || len(got) != len(data) {
		t.Fatalf("ReadBlob: %d bytes, %v", len(got), err)
	}
	var infoHits, readHits int
	var readBytes int64
	readAll := func(calls []recordedCall) bool {
		var n int64
		for _, c := range calls {
			n += c.sent
		}
		return n >= int64(len(data))
	}
	for _, c := range obs.take(t, readAll) {
		switch {
		case c.rpc == "info" && c.result == "hit":
			infoHits++
		case c.rpc == "read" && c.result == "hit":
			readHits++
			readBytes += c.sent
		default:
			t.Errorf("unexpected call %+v", c)
		}
	}
	if infoHits == 0 || readHits == 0 || readBytes != int64(len(data)) {
		t.Errorf("after Info and ReadBlob: %d info hits, %d read hits, %d bytes read (want ≥1, ≥1, %d)", infoHits, readHits, readBytes, len(data))
	}
}

func TestCallResult(t *testing.T) {
	for _, c := range []struct {
		rpc  string
		err  error
		want traffic.Result
	}{
		{"info", nil, "hit"},
		{"read", nil, "hit"},
		{"info", status.Error(codes.NotFound, "x"), "miss"},
		{"read", errdefs.ErrNotFound, "miss"},
		{"write", nil, "none"},
		{"write", status.Error(codes.AlreadyExists, "x"), "none"},
		{"abort", status.Error(codes.NotFound, "x"), "none"},
		{"read", status.Error(codes.Internal, "x"), "error"},
		{"write", errors.New("disk full"), "error"},
	} {
		if got := callResult(c.rpc, c.err); got != c.want {
			t.Errorf("callResult(%s, %v) = %s, want %s", c.rpc, c.err, got, c.want)
		}
	}
	if got := rpcName("/containerd.services.content.v1.Content/ListStatuses"); got != "list_statuses" {
		t.Errorf("rpcName = %s", got)
	}
	if got := rpcName("/x/Unknown"); got != "other" {
		t.Errorf("rpcName of an unknown method = %s, want other", got)
	}
}
