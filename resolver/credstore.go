package resolver

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Defaults of CredentialStoreOptions.
const (
	// DefaultHelperTimeout bounds one run of a credential helper.
	DefaultHelperTimeout = 10 * time.Second
	// DefaultHelperTTL is how long a helper's answer is used: the helper protocol carries no
	// expiry, and cloud registries' credentials live hours (ECR: 12 h), so a few minutes keeps
	// them fresh at the cost of one helper run per registry per TTL.
	DefaultHelperTTL = 5 * time.Minute
	// helperErrorTTL is how long a failed helper run is remembered, so that a broken helper
	// costs one run (and its timeout) per registry every few seconds instead of per request.
	helperErrorTTL = 15 * time.Second
)

// CredentialStoreOptions configure a CredentialStore.
type CredentialStoreOptions struct {
	// CredentialsFile and DockerConfig are the files read (either may be empty).
	CredentialsFile string
	DockerConfig    string
	// HelperTimeout bounds one helper run (DefaultHelperTimeout when zero).
	HelperTimeout time.Duration
	// HelperTTL is how long a helper's answer is used (DefaultHelperTTL when zero).
	HelperTTL time.Duration
	// Path is the list of directories (as PATH) searched for docker-credential-* helpers;
	// empty: the process's PATH. The helpers run with the process's environment.
	Path string
	// now is the clock (tests).
	now func() time.Time
}

// CredentialStore holds the daemon's credentials: the credentials file's and the Docker
// config's, reloaded on demand (Reload, Watch), and the answers of the credential helpers
// that the Docker config names (credsStore, credHelpers), each used until its TTL passes or
// the registry refuses it.
type CredentialStore struct {
	opts CredentialStoreOptions
	set  atomic.Pointer[credentialSet]

	mu      sync.Mutex
	helpers map[helperKey]*helperAnswer
	// stamps are the files' states at the last load (Watch compares them).
	stamps [2]fileStamp
}

type helperKey struct{ helper, registry string }

// helperAnswer is one helper run; done is closed when it finished.
type helperAnswer struct {
	done    chan struct{}
	cred    Credential
	err     error
	expires time.Time
}

// NewCredentialStore loads the files; an error names the file, never a secret.
func NewCredentialStore(opts CredentialStoreOptions) (*CredentialStore, error) {
	if opts.HelperTimeout <= 0 {
		opts.HelperTimeout = DefaultHelperTimeout
	}
	if opts.HelperTTL <= 0 {
		opts.HelperTTL = DefaultHelperTTL
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	s := &CredentialStore{opts: opts, helpers: map[helperKey]*helperAnswer{}}
	s.stamps = s.statFiles()
	set, err := loadCredentialSet(opts.CredentialsFile, opts.DockerConfig)
	if err != nil {
		return nil, err
	}
	s.set.Store(set)
	return s, nil
}

// staticCredentialStore serves a fixed map (Options.Credentials).
func staticCredentialStore(creds Credentials) *CredentialStore {
	set := &credentialSet{file: creds, auths: Credentials{}, helpers: map[string]string{}}
	s := &CredentialStore{opts: CredentialStoreOptions{now: time.Now, HelperTTL: DefaultHelperTTL, HelperTimeout: DefaultHelperTimeout}, helpers: map[helperKey]*helperAnswer{}}
	s.set.Store(set)
	return s
}

// Lookup returns the credential for a registry: the credentials file's entry when it has a
// secret, else the answer of the registry's credential helper (credHelpers, then
// credsStore), else the Docker config's auths entry. node_public of the credentials file
// applies whichever source the secret came from.
func (s *CredentialStore) Lookup(ctx context.Context, registry string) (Credential, bool) {
	if s == nil {
		return Credential{}, false
	}
	set := s.set.Load()
	fileEntry := set.file[registry]
	if fileEntry.hasSecret() {
		return fileEntry, true
	}
	c, ok := Credential{}, false
	if helper := set.helperFor(registry); helper != "" {
		c, ok = s.fromHelper(ctx, helper, registry)
	}
	if !ok {
		c, ok = set.auths[registry]
	}
	c.NodePublic = fileEntry.NodePublic
	return c, ok && c.hasSecret()
}

func (set *credentialSet) helperFor(registry string) string {
	if h, ok := set.helpers[registry]; ok {
		return h
	}
	return set.store
}

// Refused tells the store that the registry refused cred: a helper's answer equal to it is
// forgotten, so that the next Lookup asks the helper again (rotated credentials).
func (s *CredentialStore) Refused(registry string, cred Credential) {
	if s == nil {
		return
	}
	helper := s.set.Load().helperFor(registry)
	if helper == "" {
		return
	}
	key := helperKey{helper, registry}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.helpers[key]
	if !ok {
		return
	}
	select {
	case <-a.done:
		if a.err == nil && a.cred.id() == cred.id() {
			delete(s.helpers, key)
		}
	default:
		// A run is under way: its answer is newer than what was refused.
	}
}

// fromHelper returns the helper's answer for registry, running the helper when no answer is
// known or it expired; concurrent lookups share one run.
func (s *CredentialStore) fromHelper(ctx context.Context, helper, registry string) (Credential, bool) {
	key := helperKey{helper, registry}
	s.mu.Lock()
	a, ok := s.helpers[key]
	if ok {
		select {
		case <-a.done:
			if s.opts.now().After(a.expires) {
				ok = false
			}
		default:
		}
	}
	if !ok {
		a = &helperAnswer{done: make(chan struct{})}
		s.helpers[key] = a
		s.mu.Unlock()
		s.run(ctx, a, helper, registry)
	} else {
		s.mu.Unlock()
	}
	select {
	case <-a.done:
	case <-ctx.Done():
		return Credential{}, false
	}
	return a.cred, a.err == nil
}

func (s *CredentialStore) run(ctx context.Context, a *helperAnswer, helper, registry string) {
	defer close(a.done)
	// The run serves every waiter: it is bounded by its own timeout, not by this request.
	cred, err := runHelper(context.WithoutCancel(ctx), s.opts.Path, helper, registry, s.opts.HelperTimeout)
	a.cred, a.err = cred, err
	switch {
	case err == nil, errors.Is(err, errHelperNoCredential):
		a.expires = s.opts.now().Add(s.opts.HelperTTL)
	default:
		a.expires = s.opts.now().Add(min(helperErrorTTL, s.opts.HelperTTL))
	}
	entry := log.G(ctx).WithFields(log.Fields{"registry": registry, "helper": helperPrefix + helper})
	switch {
	case err == nil:
		entry.WithField("credential", cred).Debug("credential from helper")
	case errors.Is(err, errdefs.ErrNotFound):
		entry.WithError(err).Debug("no credential from helper")
	default:
		entry.WithError(err).Warn("credential helper failed; going without its credential")
	}
}

// Reload reads the files again. A file that cannot be read or parsed keeps the credentials
// in use and is reported (logged and returned). A successful reload also forgets every
// helper answer, so SIGHUP asks the helpers again too.
func (s *CredentialStore) Reload(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stamps = s.statFiles()
	set, err := loadCredentialSet(s.opts.CredentialsFile, s.opts.DockerConfig)
	if err != nil {
		log.G(ctx).WithError(err).Warn("credentials not reloaded; keeping the ones in use")
		return err
	}
	s.set.Store(set)
	s.helpers = map[helperKey]*helperAnswer{}
	log.G(ctx).WithFields(log.Fields{"credentials_file": s.opts.CredentialsFile, "docker_config": s.opts.DockerConfig}).Info("credentials reloaded")
	return nil
}

// Watch reloads the files whenever their modification time, size or identity changes
// (checked every interval), until ctx ends. A Kubernetes Secret volume replaces the file
// through a symlink swap; the stat follows the link, so that is seen too.
func (s *CredentialStore) Watch(ctx context.Context, interval time.Duration) {
	if s.opts.CredentialsFile == "" && s.opts.DockerConfig == "" {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		changed := s.statFiles() != s.stamps
		s.mu.Unlock()
		if changed {
			_ = s.Reload(ctx)
		}
	}
}

// fileStamp is what Watch compares; a missing file has the zero stamp.
type fileStamp struct {
	mtime time.Time
	size  int64
	ino   uint64
}

func (s *CredentialStore) statFiles() [2]fileStamp {
	var out [2]fileStamp
	for i, p := range []string{s.opts.CredentialsFile, s.opts.DockerConfig} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			out[i] = fileStamp{mtime: st.ModTime(), size: st.Size(), ino: inode(st)}
		}
	}
	return out
}

func inode(st os.FileInfo) uint64 {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Ino
	}
	return 0
}

// renewCredential forgets a refused credential and returns what the store says now, when
// that differs (a credential helper asked again handed out another one).
func (a *authenticator) renewCredential(ctx context.Context, registry string, refused Credential) (Credential, bool) {
	a.creds.Refused(registry, refused)
	c, ok := a.creds.Lookup(ctx, registry)
	return c, ok && c.id() != refused.id()
}
