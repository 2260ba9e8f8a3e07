package resolver

import (
	"net/http"
	"net/url"
	"strings"
)

// Challenge is one authentication challenge of a WWW-Authenticate header.
type Challenge struct {
	// Scheme is lower case: "bearer" or "basic" (others are parsed and ignored by the caller).
	Scheme string
	// Params are the auth-params with lower-case names.
	Params map[string]string
}

// Limits on what a registry may send in WWW-Authenticate: the header is untrusted input, and
// nothing legitimate comes near these.
const (
	maxChallengeHeader = 8 << 10
	maxChallenges      = 16
	maxChallengeParams = 32
)

// ParseChallenges parses the WWW-Authenticate headers of a response (RFC 7235: a list of
// challenges, each a scheme followed by comma-separated name=value or name="quoted value"
// pairs). It never fails: malformed input yields the challenges that parsed before it, so a
// hostile header costs nothing but a refused authentication.
func ParseChallenges(h http.Header) []Challenge {
	var out []Challenge
	for _, v := range h.Values("Www-Authenticate") {
		if len(v) > maxChallengeHeader {
			continue
		}
		out = append(out, parseChallengeHeader(v)...)
		if len(out) >= maxChallenges {
			return out[:maxChallenges]
		}
	}
	return out
}

func parseChallengeHeader(s string) []Challenge {
	var out []Challenge
	var cur *Challenge
	for {
		s = skipSpaceAndCommas(s)
		if s == "" {
			break
		}
		tok, rest := token(s)
		if tok == "" {
			// Not a token where one must be: stop at the first garbage.
			break
		}
		rest = skipSpace(rest)
		if strings.HasPrefix(rest, "=") && cur != nil {
			// name=value pair of the current challenge (but "token68=" style values of the
			// form "Basic abc==" are not used by registries and end up here harmlessly).
			rest = skipSpace(rest[1:])
			var val string
			var ok bool
			if strings.HasPrefix(rest, `"`) {
				val, rest, ok = quoted(rest)
			} else {
				val, rest = token(rest)
				ok = true
			}
			if !ok {
				break
			}
			if len(cur.Params) < maxChallengeParams {
				cur.Params[strings.ToLower(tok)] = val
			}
			s = rest
			continue
		}
		// A new challenge: scheme, then its params.
		if len(out) >= maxChallenges {
			break
		}
		out = append(out, Challenge{Scheme: strings.ToLower(tok), Params: map[string]string{}})
		cur = &out[len(out)-1]
		s = rest
	}
	return out
}

func skipSpace(s string) string { return strings.TrimLeft(s, " \t") }

func skipSpaceAndCommas(s string) string { return strings.TrimLeft(s, " \t,") }

// token cuts an RFC 7230 token from the front of s.
func token(s string) (string, string) {
	i := 0
	for i < len(s) && isTokenChar(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

func isTokenChar(c byte) bool {
	if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~/:", c) >= 0
}

// quoted cuts a quoted-string (with backslash escapes) from the front of s.
func quoted(s string) (string, string, bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:], true
		case '\\':
			if i+1 >= len(s) {
				return "", "", false
			}
			i++
			b.WriteByte(s[i])
		default:
			if c < 0x20 && c != '\t' || c == 0x7f {
				return "", "", false
			}
			b.WriteByte(c)
		}
	}
	return "", "", false
}

// bearerRealm returns the realm of a bearer challenge when it is a usable absolute http(s)
// URL without user info: the daemon sends credentials there.
func bearerRealm(c Challenge) (*url.URL, bool) {
	u, err := url.Parse(c.Params["realm"])
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return nil, false
	}
	return u, true
}
