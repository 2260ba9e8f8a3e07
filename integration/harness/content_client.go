package harness

import (
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ContentClient dials the content API on socket the way containerd's proxy plugin does
// (core/content/proxy over gRPC), on a connection of its own that the test closes.
func ContentClient(t testing.TB, socket string) content.Store {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewContentStore(conn)
}
