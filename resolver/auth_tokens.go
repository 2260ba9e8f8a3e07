package resolver

import (
	"context"
	"sync"
	"time"
)

// tokenKey names one bearer token: what the registry's challenge asked for and which
// credential answered it. The credential is its id (a hash), never the secret.
type tokenKey struct {
	registry, realm, service, scope, credential string
}

// fetchedToken is what a token endpoint returned.
type fetchedToken struct {
	token    string
	lifetime time.Duration
}

// tokenFetch is one token request in flight; every request that needs the token meanwhile
// waits on done instead of asking the token server again.
type tokenFetch struct {
	done  chan struct{}
	token string
	err   error
}

// tokenSlot is the cached token of one key and the fetch that replaces it, if any.
type tokenSlot struct {
	token     string
	refreshAt time.Time
	expiresAt time.Time
	inflight  *tokenFetch
}

// tokenCache keeps bearer tokens per tokenKey. A token is used until refreshAt; from then
// until it expires, the first request starts a refresh in the background and everyone keeps
// using the old token; after expiry requests wait for the new one. Concurrent requests for a
// key share one fetch.
type tokenCache struct {
	now func() time.Time
	// fetchTimeout bounds a token fetch, which runs detached from the request that started
	// it (other requests may be waiting on it).
	fetchTimeout time.Duration

	mu    sync.Mutex
	slots map[tokenKey]*tokenSlot
}

// defaultTokenLifetime applies when the token endpoint gives no expires_in (the token
// specification's default).
const defaultTokenLifetime = 60 * time.Second

func newTokenCache(now func() time.Time, fetchTimeout time.Duration) *tokenCache {
	if now == nil {
		now = time.Now
	}
	return &tokenCache{now: now, fetchTimeout: fetchTimeout, slots: map[tokenKey]*tokenSlot{}}
}

// refreshMargin is how long before expiry a token is renewed: a quarter of its lifetime, at
// most 30 s, so a token is never sent when it is about to lapse in flight.
func refreshMargin(lifetime time.Duration) time.Duration {
	return min(lifetime/4, 30*time.Second)
}

// get returns the token for key, fetching it with fetch when there is none usable.
func (c *tokenCache) get(ctx context.Context, key tokenKey, fetch func(context.Context) (fetchedToken, error)) (string, error) {
	c.mu.Lock()
	s := c.slots[key]
	if s == nil {
		s = &tokenSlot{}
		c.slots[key] = s
	}
	now := c.now()
	if s.token != "" && now.Before(s.refreshAt) {
		tok := s.token
		c.mu.Unlock()
		return tok, nil
	}
	if s.inflight == nil {
		s.inflight = c.start(key, s, fetch, context.WithoutCancel(ctx))
	}
	f := s.inflight
	if s.token != "" && now.Before(s.expiresAt) {
		// Still valid: the refresh runs in the background.
		tok := s.token
		c.mu.Unlock()
		return tok, nil
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.token, f.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (c *tokenCache) start(key tokenKey, s *tokenSlot, fetch func(context.Context) (fetchedToken, error), parent context.Context) *tokenFetch {
	f := &tokenFetch{done: make(chan struct{})}
	go func() {
		ctx, cancel := context.WithTimeout(parent, c.fetchTimeout)
		defer cancel()
		started := c.now()
		t, err := fetch(ctx)
		c.mu.Lock()
		if err == nil {
			if t.lifetime <= 0 {
				t.lifetime = defaultTokenLifetime
			}
			s.token = t.token
			s.expiresAt = started.Add(t.lifetime)
			s.refreshAt = s.expiresAt.Add(-refreshMargin(t.lifetime))
		}
		s.inflight = nil
		c.mu.Unlock()
		f.token, f.err = t.token, err
		close(f.done)
	}()
	return f
}

// drop forgets token for key after the registry refused it (401): the next get fetches a
// new one. A token other than the one refused (already replaced) is kept.
func (c *tokenCache) drop(key tokenKey, token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.slots[key]; s != nil && s.token == token {
		s.token = ""
		s.refreshAt, s.expiresAt = time.Time{}, time.Time{}
	}
}

// prune removes expired tokens with no fetch in flight, so the map does not grow with every
// repository ever pulled.
func (c *tokenCache) prune() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for k, s := range c.slots {
		if s.inflight == nil && !now.Before(s.expiresAt) {
			delete(c.slots, k)
		}
	}
}
