package resolver

import (
	"net/http"
	"net/url"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
)

// Limits on what a registry may send in WWW-Authenticate: the header is untrusted input, and
// nothing legitimate comes near these.
const (
	maxChallengeHeader = 8 << 10
	maxChallenges      = 16
	maxChallengeParams = 32
)

// ParseChallenges parses the WWW-Authenticate headers of a response with containerd's own
// parser (auth.ParseAuthHeader: one challenge per header value, schemes basic, digest and
// bearer, bearer first, lower-case parameter names), within bounds: a value over
// maxChallengeHeader bytes is skipped, at most maxChallenges values are read, and a challenge
// with more than maxChallengeParams parameters is dropped. It never fails: a hostile header
// costs nothing but a refused authentication.
func ParseChallenges(h http.Header) []auth.Challenge {
	bounded := http.Header{}
	for _, v := range h.Values("Www-Authenticate") {
		if len(v) > maxChallengeHeader {
			continue
		}
		bounded.Add("Www-Authenticate", v)
		if len(bounded["Www-Authenticate"]) >= maxChallenges {
			break
		}
	}
	var out []auth.Challenge
	for _, c := range auth.ParseAuthHeader(bounded) {
		if len(c.Parameters) <= maxChallengeParams {
			out = append(out, c)
		}
	}
	return out
}

// bearerRealm returns the realm of a bearer challenge when it is a usable absolute http(s)
// URL without user info: the daemon sends credentials there.
func bearerRealm(c auth.Challenge) (*url.URL, bool) {
	u, err := url.Parse(c.Parameters["realm"])
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return nil, false
	}
	return u, true
}
