package config

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// DefaultAdminAddress is the admin API's unix socket, beside the content socket.
const DefaultAdminAddress = "/run/containerd-blobcache/admin.sock"

// AdminConfig configures the admin API the CLI commands (stats, ls, gc, verify, rm,
// prefetch) use while the daemon runs.
type AdminConfig struct {
	Address string `toml:"address"`
}

// Size is a number of bytes, written in TOML as an integer or a string with a unit:
// "500MB", "20GiB", "1.5TB" (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024).
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// ParseSize reads "20GiB", "500MB", "1024" or "0".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*mult > 1<<62 {
		return 0, fmt.Errorf("%q is not a size such as \"20GiB\" or \"500MB\"", s)
	}
	return Size(v * mult), nil
}

// UnmarshalTOML accepts an integer number of bytes or a string with a unit.
func (s *Size) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		if v < 0 {
			return fmt.Errorf("%d is negative", v)
		}
		*s = Size(v)
		return nil
	case string:
		n, err := ParseSize(v)
		if err != nil {
			return err
		}
		*s = n
		return nil
	default:
		return fmt.Errorf("%v is not a size such as \"20GiB\"", v)
	}
}

// MarshalText writes the size in the largest binary unit that divides it.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s Size) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s != 0 && int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// TagFreshnessFor returns the freshness window of a registry: the first pattern of
// store.registry_tag_freshness that matches it (the most specific when several do: the
// longest pattern), or store.tag_freshness.
func (c StoreConfig) TagFreshnessFor(registry string) time.Duration {
	best, bestLen := c.TagFreshness.D(), -1
	for p, d := range c.RegistryTagFreshness {
		if ok, _ := path.Match(p, registry); ok && len(p) > bestLen {
			best, bestLen = d.D(), len(p)
		}
	}
	return best
}

func (c Config) validateCache(bad func(key, format string, args ...any) error) error {
	st := c.Store
	if st.MaxSize < 0 {
		return bad("store.max_size", "must not be negative")
	}
	if st.HighWatermark < 1 || st.HighWatermark > 100 {
		return bad("store.high_watermark", "%d is not a percentage between 1 and 100", st.HighWatermark)
	}
	if st.LowWatermark < 1 || st.LowWatermark > st.HighWatermark {
		return bad("store.low_watermark", "%d is not a percentage between 1 and store.high_watermark (%d)", st.LowWatermark, st.HighWatermark)
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"store.access_flush_interval", st.AccessFlushInterval},
		{"store.max_staleness", st.MaxStaleness},
	} {
		if d.v <= 0 {
			return bad(d.key, "must be a positive duration such as \"5s\"")
		}
	}
	if st.TagFreshness < 0 {
		return bad("store.tag_freshness", "must not be negative (0 revalidates every tag request)")
	}
	if st.NegativeTTL < 0 {
		return bad("store.negative_ttl", "must not be negative (0 turns negative caching off)")
	}
	for p, d := range st.RegistryTagFreshness {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return bad("store.registry_tag_freshness", "pattern %q is not a registry glob", p)
		}
		if d < 0 {
			return bad("store.registry_tag_freshness", "%q: must not be negative", p)
		}
	}
	for _, p := range st.AlwaysRevalidate {
		if p == "" {
			return bad("store.always_revalidate", "empty pattern")
		}
		if _, err := path.Match(strings.ReplaceAll(p, "/", "_"), ""); err != nil {
			return bad("store.always_revalidate", "pattern %q: %v", p, err)
		}
	}
	switch a := c.Admin.Address; {
	case !path.IsAbs(a):
		return bad("admin.address", "%q is not an absolute path", a)
	case len(a) > maxSocketPath:
		return bad("admin.address", "%q is longer than %d bytes (unix socket addresses are limited)", a, maxSocketPath)
	case path.Clean(a) != a:
		return bad("admin.address", "%q is not a clean path to a file", a)
	case a == c.Content.Address:
		return bad("admin.address", "%q is also content.address", a)
	}
	return nil
}
