package blobcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

func TestFillCommitRoundTrip(t *testing.T) {
	// Larger than the copy buffer, so that the fill takes several writes.
	const n = 3*fillBufferSize + 123
	tests := []struct {
		name      string
		size      int64
		metaType  string
		upType    string
		wantType  string
		wantExact bool
	}{
		{name: "size known", size: n, metaType: "application/vnd.oci.image.layer.v1.tar+gzip", upType: "application/octet-stream", wantType: "application/vnd.oci.image.layer.v1.tar+gzip"},
		{name: "size unknown, upstream media type", size: -1, upType: "application/octet-stream", wantType: "application/octet-stream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			ctx := t.Context()
			data, d := testBlob(n)
			src := Source{Registry: "docker.io", Repository: "library/alpine"}
			fetch := func(ctx context.Context) (Upstream, error) {
				return Upstream{Body: io.NopCloser(bytes.NewReader(data)), Size: tc.size, MediaType: tc.upType}, nil
			}
			f := mustFill(t, s, d, FillMeta{MediaType: tc.metaType, Source: src}, fetch)
			if f.Size() != tc.size || f.MediaType() != tc.wantType {
				t.Errorf("Size, MediaType = %d, %q", f.Size(), f.MediaType())
			}
			got, err := io.ReadAll(mustReader(t, f, 0))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("fill reader: %d bytes, %v", len(got), err)
			}
			waitFinished(t, f)

			path := filepath.Join(s.Root(), "blobs", "sha256", d.Encoded())
			if onDisk, err := os.ReadFile(path); err != nil || !bytes.Equal(onDisk, data) {
				t.Fatalf("blob file %s: %d bytes, %v", path, len(onDisk), err)
			}
			file, info, err := s.OpenBlob(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			defer file.Close()
			if got, _ := io.ReadAll(file); !bytes.Equal(got, data) {
				t.Error("OpenBlob content differs")
			}
			if info.Digest != d || info.Size != n || info.MediaType != tc.wantType ||
				!slices.Equal(info.Sources, []Source{src}) || info.CreatedAt.IsZero() {
				t.Errorf("info = %+v", info)
			}
			if again, err := s.Info(ctx, d); err != nil || again.Size != n {
				t.Errorf("Info = %+v, %v", again, err)
			}
			assertFillsEmpty(t, s)

			if _, err := s.Fill(ctx, d, FillMeta{}, fetch); !errdefs.IsAlreadyExists(err) {
				t.Errorf("Fill of a committed blob: %v, want already exists", err)
			}
			// A reader asked for after the fill is over is served from the committed blob.
			late := mustReader(t, f, 10)
			if got, err := io.ReadAll(late); err != nil || !bytes.Equal(got, data[10:]) {
				t.Errorf("late reader: %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestFillVerificationFailure(t *testing.T) {
	data, d := testBlob(2*fillBufferSize + 7)
	tests := []struct {
		name string
		body []byte
		size int64
	}{
		{"digest mismatch", append(slices.Clone(data[:len(data)-1]), data[len(data)-1]^1), int64(len(data))},
		{"truncated, size known", data[:len(data)/2], int64(len(data))},
		{"truncated, size unknown", data[:len(data)/2], -1},
		{"longer than announced", append(slices.Clone(data), 'x'), int64(len(data))},
		{"size announced short", data, int64(len(data)) - 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			ctx := t.Context()
			up := &countingFetch{data: tc.body, size: tc.size}
			f := mustFill(t, s, d, FillMeta{}, up.fetch)
			got, err := readFill(t, f, 0)
			if !errors.Is(err, ErrFillFailed) {
				t.Fatalf("reader error = %v, want ErrFillFailed", err)
			}
			if errors.Is(err, ErrStorage) {
				t.Errorf("upstream failure reported as storage failure: %v", err)
			}
			if tc.size >= 0 && int64(len(got)) >= tc.size {
				t.Errorf("reader got %d bytes of %d before the failure: a complete body was not held back", len(got), tc.size)
			}
			waitFinished(t, f)
			if _, err := s.Info(ctx, d); !errdefs.IsNotFound(err) {
				t.Errorf("Info: %v, want not found", err)
			}
			if names := dirEntries(t, filepath.Join(s.Root(), "blobs", "sha256")); len(names) > 0 {
				t.Errorf("blobs committed: %v", names)
			}
			assertFillsEmpty(t, s)
			// Nothing is left of the failed fill: the next one starts afresh.
			good := &countingFetch{data: data, size: int64(len(data))}
			f = mustFill(t, s, d, FillMeta{}, good.fetch)
			if got, err := io.ReadAll(mustReader(t, f, 0)); err != nil || !bytes.Equal(got, data) {
				t.Errorf("refill: %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestFillDedupe(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	data, d := testBlob(1000)
	srcA := Source{Registry: "docker.io", Repository: "library/alpine"}
	srcB := Source{Registry: "quay.io", Repository: "mirror/alpine", Private: true}

	upA := &countingFetch{data: data, size: 1000}
	waitFinished(t, mustFill(t, s, d, FillMeta{Source: srcA}, upA.fetch))

	// The second registry finds the blob committed and only adds itself as a source.
	upB := &countingFetch{data: data, size: 1000}
	if _, err := s.Fill(ctx, d, FillMeta{Source: srcB}, upB.fetch); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Fill from second registry: %v", err)
	}
	if err := s.AddSource(ctx, d, srcB); err != nil {
		t.Fatal(err)
	}
	if upB.calls.Load() != 0 {
		t.Error("second registry fetched a committed blob")
	}
	info, err := s.Info(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(info.Sources, []Source{srcA, srcB}) {
		t.Errorf("sources = %+v", info.Sources)
	}
	if names := dirEntries(t, filepath.Join(s.Root(), "blobs", "sha256")); !slices.Equal(names, []string{d.Encoded()}) {
		t.Errorf("blob files = %v", names)
	}
}

func TestFillDedupeUnrecordedFile(t *testing.T) {
	// A blob file without a record (say, one containerd's local store wrote) is not served
	// before a fill verified it; the fill then keeps the file and records it.
	s := newTestStore(t)
	ctx := t.Context()
	data, d := testBlob(1000)
	if err := os.WriteFile(s.blobPath(d), data, 0o444); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.OpenBlob(ctx, d); !errdefs.IsNotFound(err) {
		t.Fatalf("unrecorded blob served: %v", err)
	}
	up := &countingFetch{data: data, size: 1000}
	waitFinished(t, mustFill(t, s, d, FillMeta{Source: Source{Registry: "r", Repository: "x"}}, up.fetch))
	file, info, err := s.OpenBlob(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	file.Close()
	if info.Size != 1000 || len(info.Sources) != 1 {
		t.Errorf("info = %+v", info)
	}
	assertFillsEmpty(t, s)
}

func TestFillCoalescing(t *testing.T) {
	const clients = 16
	s := newTestStore(t)
	data, d := testBlob(fillBufferSize + 4096)
	up := newPipeUpstream(int64(len(data)))

	var joined, done sync.WaitGroup
	results := make([][]byte, clients)
	errs := make([]error, clients)
	joined.Add(clients)
	done.Add(clients)
	for i := range clients {
		go func() {
			defer done.Done()
			f, err := s.Fill(t.Context(), d, FillMeta{}, up.fetch)
			joined.Done()
			if err != nil {
				errs[i] = err
				return
			}
			r, err := f.NewReader(t.Context(), 0)
			if err != nil {
				errs[i] = err
				return
			}
			defer r.Close()
			results[i], errs[i] = io.ReadAll(r)
		}()
	}
	// The body stays open until every client holds the fill, so none can find it committed.
	joined.Wait()
	for chunk := range slices.Chunk(data, 10000) {
		up.write(t, chunk)
	}
	up.pw.Close()
	done.Wait()

	if n := up.calls.Load(); n != 1 {
		t.Errorf("fetch called %d times, want 1", n)
	}
	for i := range clients {
		if errs[i] != nil || !bytes.Equal(results[i], data) {
			t.Errorf("client %d: %d bytes, %v", i, len(results[i]), errs[i])
		}
	}
}

func TestFillStreamsBeforeUpstreamEnds(t *testing.T) {
	s := newTestStore(t)
	data, d := testBlob(64 << 10)
	up := newPipeUpstream(int64(len(data)))
	f := mustFill(t, s, d, FillMeta{}, up.fetch)
	r := mustReader(t, f, 0)

	first := data[:1000]
	up.write(t, first)
	got := make([]byte, len(first))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("first chunk: %v", err)
	}
	// The upstream body is still open here: the first bytes came while it downloads.
	up.write(t, data[1000:])
	up.pw.Close()
	rest, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(rest, data[1000:]) {
		t.Fatalf("rest: %d bytes, %v", len(rest), err)
	}
}

func TestFillLateJoinerAndOffsets(t *testing.T) {
	s := newTestStore(t)
	data, d := testBlob(100000)
	half := len(data) / 2
	up := newPipeUpstream(int64(len(data)))
	f := mustFill(t, s, d, FillMeta{}, up.fetch)

	up.write(t, data[:half])
	// Once a reader has seen half, half is written.
	first := mustReader(t, f, 0)
	if _, err := io.ReadFull(first, make([]byte, half)); err != nil {
		t.Fatal(err)
	}

	late, err := s.Fill(t.Context(), d, FillMeta{}, up.fetch)
	if err != nil {
		t.Fatal(err)
	}
	if late != f {
		t.Fatal("late caller did not join the running fill")
	}
	offsets := []int64{0, 1, int64(half) - 10, int64(half), int64(half) + 123, int64(len(data)) - 1, int64(len(data))}
	readers := make([]io.ReadCloser, len(offsets))
	for i, off := range offsets {
		readers[i] = mustReader(t, late, off)
	}
	// Readers below what is written get their bytes before upstream continues.
	buf := make([]byte, 10)
	if _, err := io.ReadFull(readers[2], buf); err != nil || !bytes.Equal(buf, data[half-10:half]) {
		t.Fatalf("reader below the written mark: %v", err)
	}

	up.write(t, data[half:])
	up.pw.Close()
	for i, off := range offsets {
		want := data[off:]
		if i == 2 {
			want = data[off+10:]
		}
		got, err := io.ReadAll(readers[i])
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("reader at %d: %d bytes (want %d), %v", off, len(got), len(want), err)
		}
	}
	if up.calls.Load() != 1 {
		t.Errorf("fetch called %d times", up.calls.Load())
	}
	if _, err := f.NewReader(t.Context(), int64(len(data))+1); !errdefs.IsOutOfRange(err) {
		t.Errorf("reader past the end: %v", err)
	}
	if _, err := f.NewReader(t.Context(), -1); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative offset: %v", err)
	}
}

func TestFillFetchError(t *testing.T) {
	s := newTestStore(t)
	data, d := testBlob(5000)
	upstreamErr := errors.New("upstream says 401")

	entered := make(chan struct{})
	release := make(chan struct{})
	failingFetch := func(ctx context.Context) (Upstream, error) {
		close(entered)
		<-release
		return Upstream{}, upstreamErr
	}
	joinerWaits := make(chan struct{})
	s.testHookJoin = func() { close(joinerWaits) }

	starterErr := make(chan error, 1)
	go func() {
		_, err := s.Fill(t.Context(), d, FillMeta{}, failingFetch)
		starterErr <- err
	}()
	<-entered
	joinerErr := make(chan error, 1)
	go func() {
		_, err := s.Fill(t.Context(), d, FillMeta{}, func(context.Context) (Upstream, error) {
			t.Error("joiner's fetch called")
			return Upstream{}, errors.New("unreachable")
		})
		joinerErr <- err
	}()
	<-joinerWaits
	close(release)

	if err := <-starterErr; err != upstreamErr {
		t.Errorf("starter got %v, want the fetch error unchanged", err)
	}
	if err := <-joinerErr; !errors.Is(err, ErrFillFailed) || errors.Is(err, upstreamErr) {
		t.Errorf("joiner got %v, want ErrFillFailed (not the starter's error)", err)
	}
	assertFillsEmpty(t, s)

	s.testHookJoin = nil
	up := &countingFetch{data: data, size: -1}
	f := mustFill(t, s, d, FillMeta{}, up.fetch)
	if got, err := io.ReadAll(mustReader(t, f, 0)); err != nil || !bytes.Equal(got, data) {
		t.Errorf("fresh fill: %d bytes, %v", len(got), err)
	}
	if up.calls.Load() != 1 {
		t.Errorf("fresh fill fetched %d times", up.calls.Load())
	}
}

func TestFillStorageErrorAtCreation(t *testing.T) {
	s := newTestStore(t)
	data, d := testBlob(100)
	fills := filepath.Join(s.Root(), "fills")
	if err := os.RemoveAll(fills); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fills, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	up := &countingFetch{data: data, size: 100}
	for range 2 { // the failed fill does not linger
		if _, err := s.Fill(t.Context(), d, FillMeta{}, up.fetch); !errors.Is(err, ErrStorage) {
			t.Errorf("Fill: %v, want ErrStorage", err)
		}
	}
	if up.calls.Load() != 0 {
		t.Errorf("fetch called %d times after the fill file could not be created", up.calls.Load())
	}
	if err := s.PutBlob(t.Context(), d, "", Source{}, data); !errors.Is(err, ErrStorage) {
		t.Errorf("PutBlob: %v, want ErrStorage", err)
	}
}

// failingWriterAt fails every write that would reach past limit, as a full disk would.
type failingWriterAt struct {
	w     io.WriterAt
	limit int64
	err   error
}

func (f *failingWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.limit {
		return 0, f.err
	}
	return f.w.WriteAt(p, off)
}

func TestFillStorageErrorMidWrite(t *testing.T) {
	const chunk, limit = 1000, 2500
	// The write of [2000, 3000) fails: readers get the first 2000 bytes.
	const wantOffset = 2000
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EROFS, syscall.EIO} {
		t.Run(errno.Error(), func(t *testing.T) {
			s := newTestStore(t)
			s.wrapFillFile = func(f *os.File) io.WriterAt { return &failingWriterAt{w: f, limit: limit, err: errno} }
			data, d := testBlob(10 * chunk)
			up := newPipeUpstream(int64(len(data)))
			f := mustFill(t, s, d, FillMeta{}, up.fetch)
			early := mustReader(t, f, 0)
			pastFailure := mustReader(t, f, wantOffset+500)

			go func() {
				// Writes fail once the fill stopped reading: the body is closed.
				for c := range slices.Chunk(data, chunk) {
					if _, err := up.pw.Write(c); err != nil {
						return
					}
				}
				up.pw.Close()
			}()

			got, err := io.ReadAll(early)
			var serr *StorageError
			if !errors.Is(err, ErrStorage) || !errors.As(err, &serr) || !errors.Is(err, errno) {
				t.Fatalf("reader error = %v, want a StorageError for %v", err, errno)
			}
			if errors.Is(err, ErrFillFailed) {
				t.Errorf("storage error also matches ErrFillFailed: %v", err)
			}
			if serr.Offset != wantOffset || !bytes.Equal(got, data[:wantOffset]) {
				t.Errorf("offset %d, got %d bytes; want %d", serr.Offset, len(got), wantOffset)
			}
			// A reader that started beyond the failure continues from its own position.
			_, err = io.ReadAll(pastFailure)
			if !errors.As(err, &serr) || serr.Offset != wantOffset+500 {
				t.Errorf("reader past the failure: %v", err)
			}
			waitFinished(t, f)
			if _, err := s.Info(t.Context(), d); !errdefs.IsNotFound(err) {
				t.Errorf("Info: %v, want not found", err)
			}
			assertFillsEmpty(t, s)
		})
	}
}

func TestFillCommitFailureKeepsReaders(t *testing.T) {
	s := newTestStore(t)
	data, d := testBlob(3000)
	// Renaming into blobs/sha256 fails once it is not a directory.
	blobs := filepath.Join(s.Root(), "blobs", "sha256")
	if err := os.Remove(blobs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blobs, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	up := newPipeUpstream(int64(len(data)))
	f := mustFill(t, s, d, FillMeta{}, up.fetch)
	r := mustReader(t, f, 0)
	go func() {
		up.pw.Write(data)
		up.pw.Close()
	}()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reader: %d bytes, %v", len(got), err)
	}
	waitFinished(t, f)
	if _, err := s.Info(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Errorf("Info: %v, want not found", err)
	}
	assertFillsEmpty(t, s)

	// Once the disk is fixed, the blob is fetched again.
	if err := os.Remove(blobs); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	refill := &countingFetch{data: data, size: int64(len(data))}
	waitFinished(t, mustFill(t, s, d, FillMeta{}, refill.fetch))
	if _, err := s.Info(t.Context(), d); err != nil {
		t.Errorf("Info after refill: %v", err)
	}
}

func TestFillReaderContext(t *testing.T) {
	s := newTestStore(t)
	_, d := testBlob(100)
	up := newPipeUpstream(-1)
	f := mustFill(t, s, d, FillMeta{}, up.fetch)
	ctx, cancel := context.WithCancel(t.Context())
	r, err := f.NewReader(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 10))
		readErr <- err
	}()
	cancel()
	if err := <-readErr; !errors.Is(err, context.Canceled) {
		t.Errorf("Read after cancel: %v", err)
	}
}

func TestFillOutlivesStarter(t *testing.T) {
	s := newTestStore(t)
	data, d := testBlob(5000)
	up := newPipeUpstream(int64(len(data)))
	ctx, cancel := context.WithCancel(t.Context())
	f, err := s.Fill(ctx, d, FillMeta{}, up.fetch)
	if err != nil {
		t.Fatal(err)
	}
	// The client that started the download goes away; the download goes on.
	cancel()
	up.write(t, data)
	up.pw.Close()
	waitFinished(t, f)
	if _, err := s.Info(t.Context(), d); err != nil {
		t.Errorf("Info: %v", err)
	}
}

func TestCloseCancelsFills(t *testing.T) {
	s, err := Open(t.Context(), Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	data, d := testBlob(5000)
	up := newPipeUpstream(int64(len(data)))
	f := mustFill(t, s, d, FillMeta{}, up.fetch)
	r := mustReader(t, f, 0)
	up.write(t, data[:100])

	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(r)
		readErr <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; !errors.Is(err, ErrFillFailed) {
		t.Errorf("reader after Close: %v, want ErrFillFailed", err)
	}
	if names := dirEntries(t, filepath.Join(s.Root(), "blobs", "sha256")); len(names) > 0 {
		t.Errorf("committed after Close: %v", names)
	}
}

func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "blobcache-example")
	defer os.RemoveAll(dir)
	s, err := Open(ctx, Options{Root: dir})
	if err != nil {
		panic(err)
	}
	defer s.Close()

	data := []byte("hello")
	dgst := digest.SHA256.FromBytes(data)
	f, err := s.Fill(ctx, dgst, FillMeta{Source: Source{Registry: "docker.io", Repository: "library/hello"}},
		func(ctx context.Context) (Upstream, error) {
			return Upstream{Body: io.NopCloser(bytes.NewReader(data)), Size: int64(len(data))}, nil
		})
	if err != nil {
		panic(err)
	}
	r, _ := f.NewReader(ctx, 0)
	defer r.Close()
	b, err := io.ReadAll(r)
	fmt.Println(string(b), err)
	// Output: hello <nil>
}
