//go:build bench

package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/defaults"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The null content server is the comparison of the content API's Read row: containerd's
// content API served by grpc-go with the daemon's server options, answering Info with a size
// and Read with zeros from memory, and doing nothing else (no store, no file, no log, no
// metric). Read through containerd's proxy client, 32 KiB per ReadAt as the daemon is, its
// figure is what that client can read from any grpc-go server on this machine, measured in
// the same run as the daemon. It runs in a process of its own, as the daemon does: the bench
// binary started again with nullContentEnv set (see TestMain).

// nullContentEnv carries "SOCKET SIZE" to the bench binary started as the null server.
const nullContentEnv = "BENCH_NULL_CONTENT"

// nullContent answers every digest as a blob of size zero bytes.
type nullContent struct {
	api.UnimplementedContentServer
	size  int64
	zeros []byte
}

func (n nullContent) Info(_ context.Context, req *api.InfoRequest) (*api.InfoResponse, error) {
	return &api.InfoResponse{Info: &api.Info{Digest: req.Digest, Size: n.size}}, nil
}

// Read sends at most the daemon's chunk per message, as the daemon does.
func (n nullContent) Read(req *api.ReadContentRequest, session api.Content_ReadServer) error {
	offset, size := max(req.Offset, 0), req.Size
	if offset > n.size {
		return status.Errorf(codes.OutOfRange, "read past object length %v bytes", n.size)
	}
	if size <= 0 || offset+size > n.size {
		size = n.size - offset
	}
	for size > 0 {
		chunk := min(size, int64(len(n.zeros)))
		if err := session.Send(&api.ReadContentResponse{Offset: offset, Data: n.zeros[:chunk]}); err != nil {
			return err
		}
		offset += chunk
		size -= chunk
	}
	return nil
}

// serveNullContent is the null server's process: it serves until it is killed.
func serveNullContent(arg string) {
	var socket string
	var size int64
	if _, err := fmt.Sscan(arg, &socket, &size); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", nullContentEnv, arg, err)
		os.Exit(2)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The options of plugin/content.NewService, so that only what the daemon does per call
	// differs.
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
		grpc.MaxSendMsgSize(defaults.DefaultMaxSendMsgSize),
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		grpc.WriteBufferSize(128<<10),
	)
	api.RegisterContentServer(srv, nullContent{size: size, zeros: make([]byte, 1<<20)})
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// startNullContent starts the null server for blobs of size bytes and returns its socket. It
// is stopped, by its PID, when the test ends.
func startNullContent(t *testing.T, dir string, size int64) string {
	t.Helper()
	socket := filepath.Join(dir, "null-content.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nullContentEnv+"="+socket+" "+strconv.FormatInt(size, 10))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the null content server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return socket
		}
		select {
		case err := <-exited:
			t.Fatalf("the null content server exited before listening: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the null content server did not listen on %s within 30 s", socket)
		}
	}
}
