package resolver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

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

	mu sync.Mutex
	// known is the last challenge seen from each registry host, so that later requests carry
	// a token from the first try instead of collecting a 401 each.
	known map[string]Challenge
}

func newAuthenticator(creds *CredentialStore, client *http.Client, fetchTimeout time.Duration) *authenticator {
	return &authenticator{
		creds:  creds,
		tokens: newTokenCache(time.Now, fetchTimeout),
		client: client,
		known:  map[string]Challenge{},
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
func (a *authenticator) authorizeChallenge(ctx context.Context, registry, host string, cred Credential, scope string, challenges []Challenge) (authorization, error) {
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

// pickChallenge prefers Bearer (scoped, short-lived tokens) over Basic.
func pickChallenge(challenges []Challenge) (Challenge, bool) {
	for _, c := range challenges {
		if c.Scheme == "bearer" {
			if _, ok := bearerRealm(c); ok {
				return c, true
			}
		}
	}
	for _, c := range challenges {
		if c.Scheme == "basic" {
			return c, true
		}
	}
	return Challenge{}, false
}

func (a *authenticator) answer(ctx context.Context, registry string, ch Challenge, cred Credential, scope string) (authorization, error) {
	if ch.Scheme == "basic" {
		if cred.Username == "" || cred.Password == "" {
			return authorization{}, fmt.Errorf("registry %s asks for basic auth and the credential has no password: %w", registry, ErrTokenFetch)
		}
		return authorization{value: "Basic " + base64.StdEncoding.EncodeToString([]byte(cred.Username+":"+cred.Password))}, nil
	}
	realm, _ := bearerRealm(ch)
	// A challenge may name its own scope (for example when the registry wants more than a
	// pull); the request's scope is always asked for too.
	scopes := []string{scope}
	if s := ch.Params["scope"]; s != "" && s != scope {
		scopes = append(scopes, s)
	}
	key := tokenKey{registry: registry, realm: realm.String(), service: ch.Params["service"], scope: strings.Join(scopes, " "), credential: cred.id()}
	tok, err := a.tokens.get(ctx, key, func(ctx context.Context) (fetchedToken, error) {
		t, err := a.fetchToken(ctx, realm, ch.Params["service"], scopes, cred)
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

// tokenResponse covers both token endpoint dialects: the OAuth2 POST answers access_token,
// the Docker GET token and usually access_token too.
type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
}

// fetchToken asks the realm for a token: OAuth2 POST first (password or refresh-token grant),
// and the Docker GET with basic auth when the endpoint does not do POST (as containerd does;
// some registries answer 400, 401, 404 or 405 to the POST).
func (a *authenticator) fetchToken(ctx context.Context, realm *url.URL, service string, scopes []string, cred Credential) (fetchedToken, error) {
	if !cred.hasSecret() {
		// Anonymous: the GET endpoint without basic auth.
		return a.getToken(ctx, realm, service, scopes, cred)
	}
	status, t, err := a.postToken(ctx, realm, service, scopes, cred)
	if err == nil {
		return t, nil
	}
	switch status {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound, http.StatusMethodNotAllowed:
		if cred.Username == "" || cred.Password == "" {
			return fetchedToken{}, err
		}
		log.G(ctx).WithFields(log.Fields{"realm": realm.Host, "status": status}).Debug("token endpoint refused POST; trying GET")
		return a.getToken(ctx, realm, service, scopes, cred)
	}
	return fetchedToken{}, err
}

func (a *authenticator) postToken(ctx context.Context, realm *url.URL, service string, scopes []string, cred Credential) (int, fetchedToken, error) {
	form := url.Values{}
	form.Set("client_id", "containerd-blobcache")
	if service != "" {
		form.Set("service", service)
	}
	form.Set("scope", strings.Join(scopes, " "))
	if cred.IdentityToken != "" {
		form.Set("grant_type", "refresh_token")
		form.Set("refresh_token", cred.IdentityToken)
	} else {
		form.Set("grant_type", "password")
		form.Set("username", cred.Username)
		form.Set("password", cred.Password)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, realm.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return 0, fetchedToken{}, fmt.Errorf("token request to %s: %w", realm.Host, ErrTokenFetch)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return a.sendTokenRequest(req, realm)
}

func (a *authenticator) getToken(ctx context.Context, realm *url.URL, service string, scopes []string, cred Credential) (fetchedToken, error) {
	u := *realm
	q := u.Query()
	if service != "" {
		q.Set("service", service)
	}
	for _, s := range scopes {
		q.Add("scope", s)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fetchedToken{}, fmt.Errorf("token request to %s: %w", realm.Host, ErrTokenFetch)
	}
	if cred.Username != "" {
		req.SetBasicAuth(cred.Username, cred.Password)
	}
	_, t, err := a.sendTokenRequest(req, realm)
	return t, err
}

func (a *authenticator) sendTokenRequest(req *http.Request, realm *url.URL) (int, fetchedToken, error) {
	if a.tokenRequests != nil {
		a.tokenRequests()
	}
	resp, err := a.client.Do(req)
	if err != nil {
		// Only the host and the transport's own error: the URL may carry the scope, the
		// form the password.
		return 0, fetchedToken{}, fmt.Errorf("token request to %s: %v: %w", realm.Host, unwrapURLError(err), ErrTokenFetch)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxTokenResponse))
		return resp.StatusCode, fetchedToken{}, fmt.Errorf("token request to %s: %s: %w", realm.Host, resp.Status, ErrTokenFetch)
	}
	var tr tokenResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTokenResponse)).Decode(&tr); err != nil {
		return resp.StatusCode, fetchedToken{}, fmt.Errorf("token response from %s is not JSON: %w", realm.Host, ErrTokenFetch)
	}
	tok := tr.AccessToken
	if tok == "" {
		tok = tr.Token
	}
	if tok == "" || strings.ContainsAny(tok, " \r\n\t") {
		return resp.StatusCode, fetchedToken{}, fmt.Errorf("token response from %s has no usable token: %w", realm.Host, ErrTokenFetch)
	}
	return resp.StatusCode, fetchedToken{token: tok, lifetime: time.Duration(tr.ExpiresIn) * time.Second}, nil
}
