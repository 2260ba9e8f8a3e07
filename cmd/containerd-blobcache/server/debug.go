package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/containerd/log"
)

// debugServer is the optional loopback listener with Go's pprof handlers (debug.address).
// Operators and the load tests read goroutine counts from /debug/pprof/goroutine?debug=1.
type debugServer struct {
	ln  net.Listener
	srv *http.Server
}

func listenDebug(addr string) (*debugServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &debugServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// Address is where the debug listener listens, or "" when it is off.
func (d *debugServer) Address() string {
	if d == nil {
		return ""
	}
	return d.ln.Addr().String()
}

func (d *debugServer) serve(ctx context.Context) {
	if d == nil {
		return
	}
	log.G(ctx).WithField("address", d.Address()).Info("debug listener (pprof) serving")
	if err := d.srv.Serve(d.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.G(ctx).WithError(err).Warn("debug listener stopped")
	}
}

func (d *debugServer) close() {
	if d == nil {
		return
	}
	d.srv.Close()
	d.ln.Close()
}
