package resolver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
	remoteserrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// ErrTokenFetch is returned when the daemon could not get a token for its own credentials.
// Its messages name the realm's host and the status, never a credential or a token.
var ErrTokenFetch = fmt.Errorf("token fetch failed: %w", errdefs.ErrUnauthenticated)

// maxTokenResponse bounds what a token endpoint may send back.
const maxTokenResponse = 1 << 20

// authenticator answers registries' challenges with the daemon's own credentials.
type authenticator struct {
	creds  *CredentialStore
	tokens *tokenCache
	client *http.Client
	// tokenRequests counts requests sent to token endpoints (tests read it).
	tokenRequests func()
	// tokenFetched is told of every token obtained, by registry (metrics).
	tokenFetched func(registry string)
	// tokenHeader goes with every token request (the daemon's User-Agent).
	tokenHeader http.Header

	mu sync.Mutex
	// known is the last challenge seen from each registry host, so that later requests carry
	// a token from the first try instead of collecting a 401 each.
	known map[string]auth.Challenge
}

func newAuthenticator(creds *CredentialStore, client *http.Client, fetchTimeout time.Duration) *authenticator {
	return &authenticator{
		creds:  creds,
		tokens: newTokenCache(time.Now, fetchTimeout),
		client: client,
		known:  map[string]auth.Challenge{},
	}
}

// credential returns the daemon's credential for a registry, if it has a usable one.
func (a *authenticator) credential(registry string) (Credential, bool) {
	if a == nil {
		return Credential{}, false
	}
	return a.creds.Lookup(context.Background(), registry)
}

// authorization is the Authorization header value to send, and what to drop when the
// registry refuses it.
type authorization struct {
	value string
	key   tokenKey
	token string
}

// pullScope is the token scope of a read of one repository.
func pullScope(repo string) string { return "repository:" + repo + ":pull" }

// known returns the authorization for a request to host when its challenge is already known.
func (a *authenticator) authorizeKnown(ctx context.Context, registry, host string, cred Credential, scope string) (authorization, bool) {
	a.mu.Lock()
	ch, ok := a.known[host]
	a.mu.Unlock()
	if !ok {
		return authorization{}, false
	}
	authz, err := a.answer(ctx, registry, ch, cred, scope)
	if err != nil {
		log.G(ctx).WithError(err).WithField("registry", registry).Debug("cannot authorize ahead of the challenge")
		return authorization{}, false
	}
	return authz, true
}

// authorizeChallenge answers the challenges of a 401 from host and remembers the one used.
func (a *authenticator) authorizeChallenge(ctx context.Context, registry, host string, cred Credential, scope string, challenges []auth.Challenge) (authorization, error) {
	ch, ok := pickChallenge(challenges)
	if !ok {
		return authorization{}, fmt.Errorf("registry %s: no usable bearer or basic challenge: %w", registry, ErrTokenFetch)
	}
	a.mu.Lock()
	a.known[host] = ch
	a.mu.Unlock()
	// Challenges are rare (once per host, then per refused token): a good moment to forget
	// expired tokens.
	a.tokens.prune()
	return a.answer(ctx, registry, ch, cred, scope)
}

// pickChallenge prefers Bearer (scoped, short-lived tokens) with a usable realm over Basic.
func pickChallenge(challenges []auth.Challenge) (auth.Challenge, bool) {
	for _, c := range challenges {
		if c.Scheme == auth.BearerAuth {
			if _, ok := bearerRealm(c); ok {
				return c, true
			}
		}
	}
	for _, c := range challenges {
		if c.Scheme == auth.BasicAuth {
			return c, true
		}
	}
	return auth.Challenge{}, false
}

func (a *authenticator) answer(ctx context.Context, registry string, ch auth.Challenge, cred Credential, scope string) (authorization, error) {
	if ch.Scheme == auth.BasicAuth {
		if cred.Username == "" || cred.Password == "" {
			return authorization{}, fmt.Errorf("registry %s asks for basic auth and the credential has no password: %w", registry, ErrTokenFetch)
		}
		return authorization{value: "Basic " + base64.StdEncoding.EncodeToString([]byte(cred.Username+":"+cred.Password))}, nil
	}
	realm, _ := bearerRealm(ch)
	// Realm, service and the challenge's own scopes (a registry may want more than a pull),
	// as containerd reads them; the request's scope is always asked for too, first.
	to, err := auth.GenerateTokenOptions(ctx, registry, "", "", ch)
	if err != nil {
		return authorization{}, fmt.Errorf("registry %s: %v: %w", registry, err, ErrTokenFetch)
	}
	if !slices.Contains(to.Scopes, scope) {
		to.Scopes = append([]string{scope}, to.Scopes...)
	}
	key := tokenKey{registry: registry, realm: realm.String(), service: to.Service, scope: strings.Join(to.Scopes, " "), credential: cred.id()}
	tok, err := a.tokens.get(ctx, key, func(ctx context.Context) (fetchedToken, error) {
		t, err := a.fetchToken(ctx, to, cred)
		if err == nil && a.tokenFetched != nil {
			a.tokenFetched(registry)
		}
		return t, err
	})
	if err != nil {
		return authorization{}, err
	}
	return authorization{value: "Bearer " + tok, key: key, token: tok}, nil
}

// dropRefused forgets a token the registry answered 401 to.
func (a *authenticator) dropRefused(authz authorization) {
	if authz.token != "" {
		a.tokens.drop(authz.key, authz.token)
	}
}

// tokenClientID names the daemon to OAuth2 token endpoints.
const tokenClientID = "containerd-blobcache"

// fetchToken asks the realm of to for a token with containerd's token requests: the OAuth2
// POST first (refresh-token grant with an identity token, password grant otherwise), and the
// Docker GET with basic auth when the endpoint does not do POST (as containerd does; some
// registries answer 400, 401, 404 or 405 to the POST). Without a secret, the GET alone,
// anonymously. The requests go through the resolver's own client, so the dial guard applies
// to the realm as to the registry.
func (a *authenticator) fetchToken(ctx context.Context, to auth.TokenOptions, cred Credential) (fetchedToken, error) {
	if !cred.hasSecret() {
		return a.getToken(ctx, to)
	}
	post := to
	post.Username, post.Secret = cred.Username, cred.Password
	if cred.IdentityToken != "" {
		// An empty username makes FetchTokenWithOAuth use the refresh-token grant.
		post.Username, post.Secret = "", cred.IdentityToken
	}
	a.countTokenRequest()
	resp, err := auth.FetchTokenWithOAuth(ctx, a.tokenClient(), a.tokenHeader, tokenClientID, post)
	if err == nil {
		return usableToken(to.Realm, resp.AccessToken, resp.ExpiresInSeconds)
	}
	var se remoteserrors.ErrUnexpectedStatus
	if errors.As(err, &se) {
		switch se.StatusCode {
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound, http.StatusMethodNotAllowed:
			if cred.Username == "" || cred.Password == "" {
				break
			}
			log.G(ctx).WithFields(log.Fields{"realm": realmHost(to.Realm), "status": se.StatusCode}).Debug("token endpoint refused POST; trying GET")
			get := to
			get.Username, get.Secret = cred.Username, cred.Password
			return a.getToken(ctx, get)
		}
	}
	return fetchedToken{}, tokenError(to.Realm, err)
}

// getToken is the Docker GET token request, with basic auth when to carries a secret.
func (a *authenticator) getToken(ctx context.Context, to auth.TokenOptions) (fetchedToken, error) {
	a.countTokenRequest()
	resp, err := auth.FetchToken(ctx, a.tokenClient(), a.tokenHeader, to)
	if err != nil {
		return fetchedToken{}, tokenError(to.Realm, err)
	}
	// FetchToken puts access_token, when there is one, in Token.
	return usableToken(to.Realm, resp.Token, resp.ExpiresInSeconds)
}

func (a *authenticator) countTokenRequest() {
	if a.tokenRequests != nil {
		a.tokenRequests()
	}
}

// tokenClient is the resolver's client (its transport, dial guard and redirect policy)
// with token responses bounded: containerd's fetch functions decode whatever comes.
func (a *authenticator) tokenClient() *http.Client {
	c := *a.client
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = boundedBodies{base: base, limit: maxTokenResponse}
	return &c
}

// boundedBodies cuts every response body at limit bytes.
type boundedBodies struct {
	base  http.RoundTripper
	limit int64
}

func (b boundedBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := b.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, b.limit), resp.Body}
	return resp, nil
}

// usableToken checks a token before it goes into Authorization headers.
func usableToken(realm, token string, expiresIn int) (fetchedToken, error) {
	if token == "" || strings.ContainsAny(token, " \r\n\t") {
		return fetchedToken{}, fmt.Errorf("token response from %s has no usable token: %w", realmHost(realm), ErrTokenFetch)
	}
	return fetchedToken{token: token, lifetime: time.Duration(expiresIn) * time.Second}, nil
}

// tokenError names the realm's host and what went wrong, never the URL (which may carry the
// scope) nor containerd's status error (which carries the response body).
func tokenError(realm string, err error) error {
	var se remoteserrors.ErrUnexpectedStatus
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("token request to %s: %s: %w", realmHost(realm), se.Status, ErrTokenFetch)
	case errors.Is(err, auth.ErrNoToken):
		return fmt.Errorf("token response from %s has no token: %w", realmHost(realm), ErrTokenFetch)
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return fmt.Errorf("token request to %s: %v: %w", realmHost(realm), uerr.Err, ErrTokenFetch)
	}
	return fmt.Errorf("token response from %s is not usable: %w", realmHost(realm), ErrTokenFetch)
}

func realmHost(realm string) string {
	if u, err := url.Parse(realm); err == nil {
		return u.Host
	}
	return "the token endpoint"
}
