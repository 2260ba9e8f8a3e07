package server

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// reloadCredentials reloads the credential files on SIGHUP and, every
// upstream.credentials_reload_interval, when they changed. The returned function stops both.
func (s *Server) reloadCredentials(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				// Reload logs what it kept and why.
				_ = s.creds.Reload(ctx)
			}
		}
	}()
	if every := s.cfg.Upstream.CredentialsReloadInterval.D(); every > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.creds.Watch(ctx, every)
		}()
	}
	return func() {
		signal.Stop(hup)
		cancel()
		wg.Wait()
	}
}
